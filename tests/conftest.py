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
