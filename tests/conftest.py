"""Shared test fixtures: the repository root, the real competition data beside it (optional), and a tiny
finished pipeline run with its Kaggle package."""
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


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The 'tiny' generated benchmark, downloaded (frames and ROIs of both splits); treat it as read-only."""
    from src.data.download import download_split
    from src.synthetic.generator import generate_benchmark
    root = tmp_path_factory.mktemp("bench") / "tiny"
    generate_benchmark(root, "tiny", seed=0, progress=False)
    for split in ("train", "test"):
        assert download_split(root / f"dataset_{split}.json", root / split, progress=False) == 0
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny pipeline run and its package, nested like a Kaggle input folder (made once per session).

    The 'tiny' generated benchmark, cfg/demo_tiny.yaml (WRN-10-1, 16 px, 2 heads) for 2 epochs, 2 seeds,
    1 self-training round, every decoder. Returns (PipelineConfig, the package's parent folder)."""
    from src.stages.package import package
    from src.stages.pipeline import run_pipeline
    from src.stages.pipeline_config import PipelineConfig

    base = tmp_path_factory.mktemp("tiny_pipeline")
    data = base / "data"
    cfg = PipelineConfig(
        name="tiny", train_config=str(REPO_ROOT / "cfg" / "demo_tiny.yaml"),
        train_overrides={"train": {"epochs": 2, "progress": False}},
        data_root=str(data), solution=str(data / "solution.csv"),
        prepare={"synthetic_preset": "tiny", "synthetic_seed": 0}, seeds=[0, 1], rounds=1, pseudo={"min_votes": 1},
        output_root=str(base / "out"), submissions_dir=str(base / "submissions"))
    run_pipeline(cfg)
    package(cfg, base / "kaggle_input" / "fathomnet-ensemble" / "package", decoder="argmax")
    return cfg, base / "kaggle_input" / "fathomnet-ensemble"


@pytest.fixture(scope="session")
def tiny_tta_run(tiny_run, tmp_path_factory):
    """tiny_run's data, one member trained 1 epoch with three test-time views (identity, hflip, down75), decoded
    with bayes and the frame decoders, and its package (decoder frame_bayes). Returns (PipelineConfig, the
    package's parent folder)."""
    from src.stages.package import package
    from src.stages.pipeline import run_pipeline
    from src.stages.pipeline_config import PipelineConfig

    base = tmp_path_factory.mktemp("tiny_tta")
    cfg = PipelineConfig(**{
        **tiny_run[0].model_dump(), "name": "tiny_tta", "seeds": [0], "rounds": 0,
        "train_overrides": {"train": {"epochs": 1, "progress": False, "tta_views": ["identity", "hflip", "down75"]}},
        "decoding": {"decoders": ["bayes", "frame_bayes", "frame_argmax"]},
        "output_root": str(base / "out"), "submissions_dir": str(base / "submissions")})
    run_pipeline(cfg)
    package(cfg, base / "kaggle_input" / "tta-ensemble" / "package", decoder="frame_bayes")
    return cfg, base / "kaggle_input" / "tta-ensemble"
