"""Pipeline stages on a scripted fake trainer: pseudo-label files across rounds, submit, resume after a kill.

The fake trainer writes what src.train.train writes (done.json, test/val_probs.npz) with member
predictions chosen per round, so every count below is known in advance and nothing trains.
"""
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from src.artifacts import atomic_save_npz, atomic_write_json
from src.score import score_frames
from src.stages import pipeline as pipeline_stage
from src.stages import submit as submit_stage
from src.stages.common import StageError
from src.stages.pipeline_config import PipelineConfig
from src.stages.pseudo_label import make_pseudo_labels
from src.stages.retrain import retrain
from src.stages.train_ensemble import train_ensemble
from src.submission import read_label_csv, validate_submission
from src.taxonomy import load_taxonomy

TAX = load_taxonomy()
C = len(TAX)
N_TEST, N_VAL = 30, 20
TEST_IDS = np.arange(101, 101 + N_TEST)
VAL_IDS = np.arange(1, 1 + N_VAL)
TRUTH = np.random.default_rng(0).integers(0, C, N_TEST)
VAL_TRUTH = np.random.default_rng(1).integers(0, C, N_VAL)


def member_labels(r: int) -> np.ndarray:
    """(3, N_TEST) labels of the three members in round r (see the counts in the tests)."""
    T = TRUTH
    if r == 0:
        rows = [T.copy(), T.copy(), T.copy()]
        rows[2][10:20] = (T[10:20] + 1) % C  # 10..19: two votes
        rows[1][20:] = (T[20:] + 1) % C  # 20..29: three different labels
        rows[2][20:] = (T[20:] + 2) % C
    else:
        rows = [T.copy(), T.copy(), T.copy()]
        for m in range(3):
            rows[m][0:3] = (T[0:3] + 5) % C  # 0..2: unanimous new label (changed)
            rows[m][10:15] = (T[10:15] + m) % C  # 10..14: no agreement any more (dropped)
            rows[m][25:] = (T[25:] + m) % C  # 25..29: still no agreement
        rows[2][15:20] = (T[15:20] + 1) % C  # 15..19: two votes as before; 20..24 now unanimous (added)
    return np.stack(rows)


def head_probs(labels: np.ndarray, seed: int, heads: int = 2) -> np.ndarray:
    """(H, N, C) confident softmax-like rows peaked on `labels`, a little different per head and seed."""
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.0, 0.01, size=(heads, len(labels), C))
    probs[:, np.arange(len(labels)), labels] += rng.uniform(0.6, 0.9, size=(heads, len(labels)))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


class FakeTrainer:
    """Stands in for src.train.train: records its configs and writes a finished run folder."""

    def __init__(self, fail_at_call: int | None = None):
        self.configs, self.fail_at_call = [], fail_at_call

    def __call__(self, config):
        if self.fail_at_call is not None and len(self.configs) + 1 == self.fail_at_call:
            raise KeyboardInterrupt("killed")
        self.configs.append(config)
        run_dir = Path(config.output.dir) / config.output.run_name
        r = int(re.search(r"round_(\d+)", str(run_dir)).group(1))
        m = config.seed - 10
        names = np.array(TAX.names)
        atomic_save_npz(run_dir / "test_probs.npz", annotation_id=TEST_IDS[::-1],  # any order: aligned by id
                        probs=head_probs(member_labels(r)[m], config.seed)[:, ::-1], classes=names)
        atomic_save_npz(run_dir / "val_probs.npz", annotation_id=VAL_IDS, probs=head_probs(VAL_TRUTH, config.seed + 99),
                        classes=names, labels=VAL_TRUTH)
        atomic_write_json(run_dir / "done.json", {"seed": config.seed})
        return run_dir


@pytest.fixture
def cfg(tmp_path) -> PipelineConfig:
    root = tmp_path / "data"
    root.mkdir()
    coco = lambda anns: {"images": [{"id": 1, "file_name": "1.png", "width": 64, "height": 64}],  # noqa: E731
                         "annotations": anns, "categories": []}
    (root / "dataset_train.json").write_text(json.dumps(coco([{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 9, 9]}])))
    (root / "dataset_test.json").write_text(json.dumps(coco(
        [{"id": int(i), "image_id": 1, "category_id": None, "bbox": [0, 0, 9, 9]} for i in TEST_IDS])))
    pd.DataFrame({"annotation_id": TEST_IDS, "concept_name": np.array(TAX.names)[TRUTH]}).to_csv(root / "solution.csv", index=False)
    (tmp_path / "train.yaml").write_text("train:\n  epochs: 1\n")
    return PipelineConfig(
        name="t", train_config=str(tmp_path / "train.yaml"), data_root=str(root), solution=str(root / "solution.csv"),
        seeds=[10, 11, 12], rounds=2, prepare={"download": False}, pseudo={"min_votes": 2},
        output_root=str(tmp_path / "out"), submissions_dir=str(tmp_path / "subs"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pseudo_labels_are_voted_gated_and_updated_across_rounds(cfg):
    train_json = Path(cfg.data_root) / "dataset_train.json"
    before = digest(train_json)
    trainer = FakeTrainer()
    train_ensemble(cfg, trainer)
    stats = make_pseudo_labels(cfg, 1)
    first = pd.read_csv(cfg.layout.pseudo_labels(1))
    assert list(first.columns) == ["annotation_id", "concept_name", "votes", "agreement", "U"]
    assert sorted(first["annotation_id"]) == TEST_IDS[:20].tolist()
    assert (first.set_index("annotation_id").loc[TEST_IDS[:10], "votes"] == 3).all()
    np.testing.assert_allclose(first.set_index("annotation_id").loc[TEST_IDS[10:20], "agreement"], 2 / 3, atol=1e-4)
    assert first["U"].between(0, 1).all()
    assert stats["count"] == 20 and stats["accuracy"] == 1.0 and stats["mean_distance"] == 0.0
    assert stats["votes_histogram"] == {1: 10, 2: 10, 3: 10}
    assert (cfg.layout.round_dir(1) / "pseudo_labels.png").stat().st_size > 1000
    saved = json.loads((cfg.layout.round_dir(1) / "stats.json").read_text())
    assert saved["count"] == 20 and saved["curves"][0]["coverage"] == 1.0  # >= 1 vote, U >= 0: everything

    retrain(cfg, 1, trainer)
    assert all(str(c.data.pseudo_labels).endswith("round_1/pseudo_labels.csv") for c in trainer.configs[3:])
    assert all(c.data.solution == cfg.solution and c.data.split_seed == cfg.split_seed for c in trainer.configs)
    stats = make_pseudo_labels(cfg, 2)
    second = pd.read_csv(cfg.layout.pseudo_labels(2)).set_index("annotation_id")
    assert (stats["added"], stats["dropped"], stats["changed"], stats["unchanged"]) == (5, 5, 3, 12)
    assert not set(TEST_IDS[10:15]) & set(second.index)  # dropped again
    assert set(TEST_IDS[20:25]) <= set(second.index)  # newly passing
    assert second.loc[TEST_IDS[0], "concept_name"] == TAX.names[(TRUTH[0] + 5) % C]  # updated label
    assert stats["accuracy"] == pytest.approx(17 / 20)
    assert len(pd.read_csv(cfg.layout.pseudo_labels(1))) == 20  # the earlier round's file is kept as it was
    assert digest(train_json) == before  # training annotations never written


def test_u_threshold_and_min_votes_gate(cfg):
    train_ensemble(cfg, FakeTrainer())
    cfg.pseudo.min_votes = 3
    assert make_pseudo_labels(cfg, 1)["count"] == 10
    cfg.pseudo.min_votes = 1
    cfg.pseudo.u_threshold = 1.0  # U < 1 for any spread-out ensemble: nothing passes
    assert make_pseudo_labels(cfg, 1)["count"] == 0


def test_retrain_warm_start_and_missing_inputs(cfg):
    trainer = FakeTrainer()
    with pytest.raises(StageError, match="run the pseudo_label stage"):
        retrain(cfg, 1, trainer)
    with pytest.raises(StageError, match="not finished"):
        make_pseudo_labels(cfg, 1)
    train_ensemble(cfg, trainer)
    make_pseudo_labels(cfg, 1)
    cfg.warm_start = True
    cfg.train_overrides = {"train": {"epochs": 12, "batch_size": 32}}
    cfg.warm_start_overrides = {"train": {"epochs": 4}, "optim": {"warmup_epochs": 0}}
    with pytest.raises(StageError, match="warm start: .*neither model.pt nor checkpoint.pt"):
        retrain(cfg, 1, trainer)
    for s in cfg.seeds:  # the weights-only model.pt is preferred where both exist
        (cfg.layout.member_dir(0, s) / "checkpoint.pt").write_bytes(b"x")
    (cfg.layout.member_dir(0, 11) / "model.pt").write_bytes(b"x")
    retrain(cfg, 1, trainer)
    warm = trainer.configs[3:]
    assert [Path(c.model.pretrained_path).parent.name for c in warm] == ["seed_10", "seed_11", "seed_12"]
    assert [Path(c.model.pretrained_path).name for c in warm] == ["checkpoint.pt", "model.pt", "checkpoint.pt"]
    # warm-started members take warm_start_overrides over train_overrides; round 0's members do not
    assert [(c.train.epochs, c.train.batch_size, c.optim.warmup_epochs) for c in warm] == [(4, 32, 0)] * 3
    assert all(c.train.epochs != 4 and c.model.pretrained_path is None for c in trainer.configs[:3])


def test_submit_writes_valid_csvs_and_a_decoder_table(cfg, capsys):
    trainer = FakeTrainer()
    train_ensemble(cfg, trainer)
    rows = submit_stage.submit(cfg, r=0)
    assert [row["decoder"] for row in rows] == cfg.decoding.decoders
    solution = read_label_csv(cfg.solution)
    for row in rows:
        path = cfg.layout.submission(row["decoder"])
        assert path.name == f"t_{row['decoder']}.csv"
        assert validate_submission(path, TEST_IDS.tolist(), TAX) == []
        assert row["test_score"] == pytest.approx(score_frames(solution, read_label_csv(path), TAX)["score"])
        assert row["val_distance"] == 0.0  # every member is right on validation
    by = {row["decoder"]: row for row in rows}
    # ROIs 20..29 (members disagree, member 0 right) cost distance under voting ties unless U picks member 0
    assert by["argmax"]["test_score"] >= 0 and by["vote"]["test_accuracy"] >= 2 / 3
    table = (cfg.layout.submit_dir / "scores.md").read_text()
    assert all(f"| {d} |" in table for d in cfg.decoding.decoders) and "temperature" in table
    assert json.loads((cfg.layout.submit_dir / "scores.json").read_text())["round"] == 0


def test_kaggle_submit_without_credentials_is_a_clear_error(cfg, tmp_path, monkeypatch, capsys):
    train_ensemble(cfg, FakeTrainer())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    config_path = tmp_path / "pipe.yaml"
    config_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    code = submit_stage.main([str(config_path), "rounds=0", "--kaggle-submit"])
    err = capsys.readouterr().err
    assert code == 2 and "kaggle credentials not found" in err


def test_pipeline_resumes_after_a_kill_and_summarises(cfg, capsys):
    killer = FakeTrainer(fail_at_call=5)  # round 0 (3 members) and one member of round 1, then killed
    with pytest.raises(KeyboardInterrupt):
        pipeline_stage.run_pipeline(cfg, killer)
    state = json.loads(cfg.layout.state.read_text())
    assert list(state["finished"]) == ["prepare", "train_ensemble", "pseudo_label_1"]
    capsys.readouterr()

    trainer = FakeTrainer()
    summary = pipeline_stage.run_pipeline(cfg, trainer)
    out = capsys.readouterr().out
    assert "step 2/7 train_ensemble: already done" in out and "step 3/7 pseudo_label_1: already done" in out
    # the member finished before the kill is not trained again: 2 of round 1 + 3 of round 2
    assert [(Path(c.output.dir).parent.name, c.seed) for c in trainer.configs] == [
        ("round_1", 11), ("round_1", 12), ("round_2", 10), ("round_2", 11), ("round_2", 12)]
    state = json.loads(cfg.layout.state.read_text())
    assert list(state["finished"]) == ["prepare", "train_ensemble", "pseudo_label_1", "retrain_1",
                                       "pseudo_label_2", "retrain_2", "submit"]
    rounds = summary["rounds"]
    assert [row["round"] for row in rounds] == [0, 1, 2]
    assert rounds[1]["pseudo_labels"] == 20 and rounds[2]["pseudo_labels"] == 20
    assert rounds[2]["pseudo_accuracy"] == pytest.approx(0.85)
    assert all(f"test_{d}" in rounds[0] and f"val_{d}" in rounds[0] for d in cfg.decoding.decoders)
    saved = (cfg.layout.root / "summary.md").read_text()
    assert "| round |" in saved and "Time per step" in saved
    assert json.loads((cfg.layout.root / "summary.json").read_text())["rounds"][2]["pseudo_labels"] == 20

    # a third run does nothing but the summary; a changed config is refused
    again = FakeTrainer()
    pipeline_stage.run_pipeline(cfg, again)
    assert again.configs == []
    cfg.pseudo.min_votes = 3
    with pytest.raises(StageError, match="different config"):
        pipeline_stage.run_pipeline(cfg, again)


# ------------------------------------------------------------------ the real chain, killed and resumed
def _wait_for(path: Path, proc, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_real_pipeline_on_tiny_benchmark_resumes_after_sigkill(tmp_path):
    """prepare -> 2 tiny members -> pseudo-labels -> retrain -> submit; SIGKILL in the middle of the retrain."""
    repo = Path(__file__).resolve().parents[1]
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "train_config": str(repo / "cfg" / "demo_tiny.yaml"),
        "train_overrides": {"train": {"epochs": 1}},
        "data_root": str(tmp_path / "tiny"), "solution": str(tmp_path / "tiny" / "solution.csv"),
        "prepare": {"synthetic_preset": "tiny"}, "seeds": [0, 1], "rounds": 1, "pseudo": {"min_votes": 1},
        "output_root": str(tmp_path / "out"), "submissions_dir": str(tmp_path / "subs")}))
    command = [sys.executable, "-m", "src.stages.pipeline", str(config)]
    run = tmp_path / "out" / "tiny"
    proc = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(run / "round_1" / "members" / "seed_0" / "done.json", proc, 150), proc.communicate()[0]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads((run / "state.json").read_text())
    assert list(state["finished"]) == ["prepare", "train_ensemble", "pseudo_label_1"]
    pseudo_before = (run / "round_1" / "pseudo_labels.csv").read_bytes()

    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for step in ("prepare", "train_ensemble", "pseudo_label_1"):
        assert f"{step}: already done" in out
    assert "member seed 0 (1/2): done, skipped" in out and "member seed 1 (2/2): training" in out
    assert (run / "round_1" / "pseudo_labels.csv").read_bytes() == pseudo_before
    summary = json.loads((run / "summary.json").read_text())
    assert [row["round"] for row in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["pseudo_labels"] > 0 and 0 <= summary["rounds"][1]["test_bayes"] <= 12
    test_ids = pd.read_csv(tmp_path / "tiny" / "solution.csv")["annotation_id"].tolist()
    for decoder in ("argmax", "vote", "bayes", "bayes_cal", "diffusion"):
        assert validate_submission(tmp_path / "subs" / f"tiny_{decoder}.csv", test_ids, TAX) == []
