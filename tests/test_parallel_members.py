"""pipeline parallel_members: a round's members trained side by side in their own processes give the same
members as training them one after another, each member's output goes to its train.log, and a failing member
stops the round with its error."""
from pathlib import Path

import numpy as np
import pytest

from src.run_files import DONE_FILE, TRAIN_LOG_FILE, probs_file
from src.stages.cli import StageError
from src.stages.members import train_round
from src.stages.pipeline_config import PipelineConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def _config(tiny_root: Path, out: Path, parallel: int) -> PipelineConfig:
    return PipelineConfig(
        name="par", train_config=str(REPO_ROOT / "cfg" / "demo_tiny.yaml"),
        train_overrides={"train": {"epochs": 1, "progress": False, "threads": 1}},
        data_root=str(tiny_root), solution=str(tiny_root / "solution.csv"), seeds=[0, 1], rounds=0,
        parallel_members=parallel, output_root=str(out), submissions_dir=str(out / "submissions"))


def fail_on_seed_1(config) -> None:
    """A trainer (module level: the worker processes import it) that fails for seed 1 and finishes seed 0."""
    if config.seed == 1:
        raise StageError("seed 1 cannot train")
    from src.train import train

    train(config)


def test_parallel_members_match_sequential(tiny_root, tmp_path):
    sequential = train_round(_config(tiny_root, tmp_path / "seq", 1), 0)
    parallel = train_round(_config(tiny_root, tmp_path / "par", 2), 0)
    assert [d.name for d in parallel] == [d.name for d in sequential]
    for a, b in zip(sequential, parallel):
        assert (b / DONE_FILE).is_file()
        assert "epoch" in (b / TRAIN_LOG_FILE).read_text()  # the member's own output, not the parent's
        assert not (a / TRAIN_LOG_FILE).exists()
        with np.load(a / probs_file("test")) as pa, np.load(b / probs_file("test")) as pb:
            for key in pa.files:  # one thread each: the very same numbers, side by side or not
                np.testing.assert_array_equal(pa[key], pb[key])


def test_parallel_member_failure_stops_the_round(tiny_root, tmp_path):
    cfg = _config(tiny_root, tmp_path, 2)
    with pytest.raises(StageError, match="seed 1 cannot train"):
        train_round(cfg, 0, trainer=fail_on_seed_1)
    assert (cfg.layout.member_dir(0, 0) / DONE_FILE).is_file()  # the other member still finished
    assert not (cfg.layout.member_dir(0, 1) / DONE_FILE).exists()
