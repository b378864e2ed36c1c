"""Shared test fixtures: the repository root and the real competition data beside it (optional)."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "fathomnet2025"


@pytest.fixture
def shared_data() -> Path:
    """The real FathomNet 2025 data folder; the test is skipped when ../shared is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/fathomnet2025 is not beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_taxonomy():
    """Six concepts covering the tree's cases: a genus concept with a species below it, a phylum concept
    above other concepts, a concept at a rank outside the seven, and a second phylum."""
    from src.taxonomy import Taxonomy
    lineages = {
        "A a": ("K", "P1", "C1", "O1", "F1", "A", "A a"),
        "A": ("K", "P1", "C1", "O1", "F1", "A", None),
        "B b": ("K", "P1", "C1", "O1", "F1", "B", "B b"),
        "P1": ("K", "P1", None, None, None, None, None),
        "Odd": ("K", "P1", "C2", None, None, None, None),  # like Zoantharia: named at no standard rank
        "Q q": ("K", "P2", "C3", "O3", "F3", "Q", "Q q"),
    }
    return Taxonomy(names=tuple(lineages), category_ids=tuple(range(1, 7)), lineages=tuple(lineages.values()))
