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

from src.artifacts import RunLockedError, atomic_save_npz, atomic_write_json, atomic_write_text, run_lock
from src.config import ConfigError, config_to_yaml
from src.score import score_frames
from src.stages import pipeline as pipeline_stage
from src.stages import pseudo_label as pseudo_label_stage
from src.stages import submit as submit_stage
from src.stages import train_ensemble as train_ensemble_stage
from src.stages.cli import StageError
from src.stages.members import build_member_config
from src.stages.pipeline_config import PipelineConfig
from src.stages.pseudo_label import make_pseudo_labels
from src.stages.retrain import retrain
from src.stages.train_ensemble import train_ensemble
from src.submission import read_label_csv, validate_submission
from src.taxonomy import distance_matrix, load_taxonomy

TAX = load_taxonomy()
TAX_D = distance_matrix(TAX)
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

    def __init__(self, fail_at_call: int | None = None, weights: bool = False):
        self.configs, self.fail_at_call, self.weights = [], fail_at_call, weights

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
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(config))
        if self.weights:  # the weights-only file training writes every epoch (its content is not read here)
            atomic_write_text(run_dir / "model.pt", "weights")
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


def write_round(cfg, r: int, test_probs: list, val_probs: list, val_labels, val_frames=None, test_sets=None,
                val_sets=None) -> None:
    """Finished members of round r with the given (H, N, C) probabilities (and set-head scores)."""
    names = np.array(TAX.names)
    val_ids = np.arange(1, 1 + len(val_labels))
    for m, seed in enumerate(cfg.seeds):
        run_dir = cfg.layout.member_dir(r, seed)
        extra = {} if test_sets is None else {"avgk_scores": test_sets}
        atomic_save_npz(run_dir / "test_probs.npz", annotation_id=TEST_IDS, probs=test_probs[m], classes=names, **extra)
        extra = {} if val_frames is None else {"image_id": np.asarray(val_frames)}
        extra.update({} if val_sets is None else {"avgk_scores": val_sets})
        atomic_save_npz(run_dir / "val_probs.npz", annotation_id=val_ids, probs=val_probs[m], classes=names,
                        labels=np.asarray(val_labels), **extra)
        atomic_write_json(run_dir / "done.json", {"seed": seed})


def test_every_gate_at_equal_coverage_and_the_chosen_gate(cfg):
    train_ensemble(cfg, FakeTrainer())
    default = make_pseudo_labels(cfg, 1)
    default_csv = cfg.layout.pseudo_labels(1).read_bytes()
    table = {(row["gate"], row["target_coverage"]): row for row in default["gates_at_equal_coverage"]}
    assert {g for g, _ in table} == {"agreement", "agreement_u", "expected_distance", "max_prob"}  # no set head
    from src.decoding import load_predictions

    members = [cfg.layout.member_dir(0, s) for s in cfg.seeds]
    mean = load_predictions(members, "test", TAX).mean
    top = mean.max(axis=1)  # the max_prob gate by hand: the 15 most probable of 30 ROIs
    keep = top >= np.sort(top)[::-1][14]
    assert table["max_prob", 0.5]["count"] == keep.sum() == 15
    assert table["max_prob", 0.5]["precision"] == pytest.approx((mean.argmax(1) == TRUTH)[keep].mean())
    assert table["agreement", 0.6]["precision"] == 1.0 and table["agreement", 0.6]["coverage"] == pytest.approx(2 / 3)
    assert default["gate"] == "agreement_u"
    cfg.pseudo.gate = "agreement"  # with u_threshold 0 the same ROIs as agreement_u
    assert make_pseudo_labels(cfg, 1)["count"] == 20 and cfg.layout.pseudo_labels(1).read_bytes() == default_csv
    D = np.array([[TAX_D[i, j] for j in range(C)] for i in range(C)])
    risk = (mean @ D).min(axis=1)
    cfg.pseudo.gate, cfg.pseudo.tau = "expected_distance", float(np.median(risk))
    stats = make_pseudo_labels(cfg, 1)
    written = pd.read_csv(cfg.layout.pseudo_labels(1))
    assert stats["count"] == len(written) == (risk <= cfg.pseudo.tau).sum()
    assert sorted(written.annotation_id) == TEST_IDS[risk <= cfg.pseudo.tau].tolist()
    cfg.pseudo.gate = "avgk_set_size"
    with pytest.raises(StageError, match="avgk_head"):
        make_pseudo_labels(cfg, 1)


def test_avgk_set_size_gate_reads_the_members_set_scores(cfg):
    probs = [head_probs(TRUTH, s) for s in range(3)]
    val_sets = np.zeros((N_VAL, C), np.float32)
    val_sets[:, :2] = [0.9, 0.8]  # 2 concepts per validation ROI at >= 0.8: avgk_k = 2 fits the threshold 0.8
    test_sets = np.full((N_TEST, C), 0.1, np.float32)
    for i in range(N_TEST):
        test_sets[i, : i % 3 + 1] = 0.95  # sets of 1, 2, 3 concepts
    write_round(cfg, 0, probs, [head_probs(VAL_TRUTH, s) for s in range(3)], VAL_TRUTH, test_sets=test_sets,
                val_sets=val_sets)
    cfg.pseudo.gate, cfg.pseudo.avgk_k, cfg.pseudo.max_set_size = "avgk_set_size", 2.0, 1
    stats = make_pseudo_labels(cfg, 1)
    written = pd.read_csv(cfg.layout.pseudo_labels(1))
    assert written.annotation_id.tolist() == TEST_IDS[::3].tolist() and stats["accuracy"] == 1.0
    assert {row["gate"] for row in stats["gates_at_equal_coverage"]} >= {"avgk_set_size"}


def test_coarse_pseudo_labels_where_members_agree_on_a_taxon_only(cfg):
    names = [TAX.names[t] for t in TRUTH]
    members = np.array([names, names, names], dtype=object)
    members[:, 10] = ["Pandalus amplus", "Pandalus platyceros", "Munidopsis"]  # genus Pandalus
    members[:, 11] = ["Heterocarpus", "Pandalus amplus", "Sebastes"]  # family Pandalidae
    members[:, 12] = ["Caridea", "Munidopsis", "Sebastes"]  # order Decapoda
    members[:, 13] = ["Sebastes", "Porifera", "Mycale"]  # only the phylum Porifera: no coarse label
    labels = TAX.indices(members.ravel()).reshape(3, N_TEST)
    write_round(cfg, 0, [head_probs(labels[m], m) for m in range(3)], [head_probs(VAL_TRUTH, s) for s in range(3)],
                VAL_TRUTH)
    truth = np.array(names, dtype=object)
    truth[10:13] = ["Pandalus platyceros", "Sebastes", "Munidopsis"]  # under the taxon, not, under it
    pd.DataFrame({"annotation_id": TEST_IDS, "concept_name": truth}).to_csv(cfg.solution, index=False)
    cfg.pseudo.gate, cfg.pseudo.coarse = "agreement", True
    stats = make_pseudo_labels(cfg, 1)
    written = pd.read_csv(cfg.layout.pseudo_labels(1), keep_default_na=False).set_index("annotation_id")
    assert list(written.columns) == ["concept_name", "votes", "agreement", "U", "target_taxon"]
    coarse = written[written.target_taxon != ""]
    assert coarse.target_taxon.to_dict() == {TEST_IDS[10]: "Pandalus", TEST_IDS[11]: "Pandalidae",
                                             TEST_IDS[12]: "Decapoda"}
    assert coarse.votes.tolist() == [2, 2, 2] and len(written) == N_TEST - 1  # ROI 13 is left out
    for taxon, concept in zip(coarse.target_taxon, coarse.concept_name):  # a concept under its taxon
        assert taxon in TAX.lineages[TAX.index(concept)]
    assert stats["coarse_count"] == 3 and stats["coarse_by_rank"] == {"genus": 1, "family": 1, "order": 1}
    assert stats["coarse_precision"] == pytest.approx(2 / 3)
    from src.gates import pseudo_label_targets

    targets, masks = pseudo_label_targets(written.reset_index(), TAX)  # what training reads
    assert (targets[10:13] >= C).all() and masks[10].sum() == 2 and masks[12].sum() == 9
    cfg.pseudo.coarse_min_rank = "family"
    assert make_pseudo_labels(cfg, 1)["coarse_by_rank"] == {"genus": 1, "family": 1}


def test_frame_aware_pseudo_labels_and_frame_decoders(cfg, monkeypatch):
    """Frames of two ROIs of one label: one sure ROI, one leaning to a far label. The prior comes from the
    training frames, w from the validation frames; test frames come from dataset_test.json."""
    a, b = TAX.index("Sebastes diploproa"), TAX.index("Porifera")
    root = Path(cfg.data_root)
    train_labels = np.concatenate([np.repeat([a, b], 20), np.repeat([a, b], N_VAL // 2)])
    train_frames = np.concatenate([np.repeat(np.arange(20), 2), 100 + np.arange(N_VAL) // 2])
    train_ids = np.arange(1000, 1000 + len(train_labels) - N_VAL).tolist() + list(range(1, N_VAL + 1))
    categories = [{"id": c + 1, "name": TAX.names[c]} for c in range(C)]

    def coco(anns, frames):
        return {"images": [{"id": int(f), "file_name": f"{f}.png"} for f in np.unique(frames)], "annotations": anns,
                "categories": categories}

    (root / "dataset_train.json").write_text(json.dumps(coco(
        [{"id": int(i), "image_id": int(f), "category_id": int(c) + 1}
         for i, f, c in zip(train_ids, train_frames, train_labels)], train_frames)))
    truth = np.repeat(np.where(np.arange(N_TEST // 2) % 2 == 0, a, b), 2)
    test_frames = 500 + np.arange(N_TEST) // 2
    (root / "dataset_test.json").write_text(json.dumps(coco(
        [{"id": int(i), "image_id": int(f), "category_id": None} for i, f in zip(TEST_IDS, test_frames)], test_frames)))
    pd.DataFrame({"annotation_id": TEST_IDS, "concept_name": np.array(TAX.names)[truth]}).to_csv(cfg.solution,
                                                                                                index=False)

    def leaning(labels, seed):  # even ROIs sure, odd ones leaning to the other label
        probs = np.full((2, len(labels), C), 1e-4)
        other = np.where(labels == a, b, a)
        sure = np.arange(len(labels)) % 2 == 0
        rows = np.arange(len(labels))
        probs[:, rows, labels] += np.where(sure, 0.9, 0.45) + 0.01 * seed
        probs[:, rows, other] += np.where(sure, 0.05, 0.5)
        return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)

    val_labels = np.repeat([a, b], N_VAL // 2)
    write_round(cfg, 0, [leaning(truth, m) for m in range(3)], [leaning(val_labels, m) for m in range(3)], val_labels,
                val_frames=100 + np.arange(N_VAL) // 2)
    cfg.pseudo.gate = "agreement"
    assert make_pseudo_labels(cfg, 1)["accuracy"] == 0.5  # every leaning ROI gets the wrong label
    cfg.pseudo.frame_aware = True
    assert make_pseudo_labels(cfg, 1)["accuracy"] == 1.0
    cfg.decoding.decoders = ["argmax", "frame_argmax", "frame_bayes"]
    rows = {row["decoder"]: row for row in submit_stage.submit(cfg, r=0)}
    assert rows["argmax"]["test_accuracy"] == 0.5 and rows["frame_argmax"]["test_accuracy"] == 1.0
    assert rows["frame_bayes"]["test_accuracy"] == 1.0 and rows["frame_bayes"]["val_distance"] == 0.0
    weights = json.loads((cfg.layout.submit_dir / "scores.json").read_text())["frame_weights"]
    assert set(weights) == {"frame_argmax", "frame_bayes"} and min(weights.values()) > 0
    uploaded = []  # --kaggle-submit uploads frame_bayes unless told otherwise
    monkeypatch.setattr(submit_stage, "kaggle_submit", lambda path, competition, message: uploaded.append(path.name))
    config_path = root / "pipe.yaml"
    config_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    for extra in ([], ["--decoder", "argmax"]):
        assert submit_stage.main([str(config_path), "rounds=0", "--round", "0", "--kaggle-submit", *extra]) == 0
    assert uploaded == ["t_frame_bayes.csv", "t_argmax.csv"]
    (root / "dataset_test.json").write_text(json.dumps(coco([], [])))
    with pytest.raises(StageError, match="not in the COCO file"):
        submit_stage.submit(cfg, r=0)


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


def test_warm_started_members_from_model_pt_are_kept_and_their_overrides_fingerprinted(cfg, capsys):
    """A finished member warm-started from round r-1's model.pt is skipped by a rerun of its stage (not refused
    as trained with another config); warm_start_overrides are part of the run's config; a member with only a
    model.pt (killed before its first full checkpoint) keeps its round's pseudo-labels from being rewritten."""
    cfg.rounds, cfg.warm_start, cfg.warm_start_overrides = 1, True, {"train": {"epochs": 3}}
    trainer = FakeTrainer(weights=True)
    pipeline_stage.run_pipeline(cfg, trainer)
    assert [Path(c.model.pretrained_path).name for c in trainer.configs[3:]] == ["model.pt"] * 3
    assert [c.train.epochs for c in trainer.configs] == [1, 1, 1, 3, 3, 3]
    again = FakeTrainer(weights=True)
    capsys.readouterr()
    retrain(cfg, 1, again)  # the stage alone, past its recorded step: every member is checked and skipped
    assert again.configs == [] and capsys.readouterr().out.count("done, skipped") == 3
    changed = cfg.model_copy(update={"warm_start_overrides": {"train": {"epochs": 4}}})
    with pytest.raises(StageError, match="different config"):
        pipeline_stage.run_pipeline(changed, again)
    cfg.layout.state.unlink()  # beneath the fingerprint: the member check still sees the change
    with pytest.raises(StageError, match=r"trained with another config \(train.epochs\)"):
        retrain(changed, 1, again)
    for s in cfg.seeds:
        (cfg.layout.member_dir(1, s) / "done.json").unlink()
    other = cfg.model_copy(update={"pseudo": cfg.pseudo.model_copy(update={"u_threshold": 0.5})})
    with pytest.raises(StageError, match="is what round 1's members"):
        make_pseudo_labels(other, 1)


class CheckpointTrainer(FakeTrainer):
    """FakeTrainer that also leaves a checkpoint.pt, as src.train does."""

    def __call__(self, config):
        run_dir = super().__call__(config)
        (run_dir / "checkpoint.pt").write_text("state")
        return run_dir


def test_finished_members_lose_their_checkpoint_unless_kept(cfg):
    cfg.rounds = 0
    train_ensemble(cfg, CheckpointTrainer(weights=True))
    members = [cfg.layout.member_dir(0, s) for s in cfg.seeds]
    assert all((m / "model.pt").is_file() and not (m / "checkpoint.pt").exists() for m in members)
    kept = cfg.model_copy(update={"name": "kept", "keep_checkpoints": True})
    train_ensemble(kept, CheckpointTrainer(weights=True))
    assert all((kept.layout.member_dir(0, s) / "checkpoint.pt").is_file() for s in cfg.seeds)
    # members found done on a re-run lose theirs, but not where it holds the only weights (no model.pt);
    # keep_checkpoints is not part of the run's fingerprint: the run goes on with either value
    for m in members[:2]:
        (m / "checkpoint.pt").write_text("state")
    (members[1] / "model.pt").unlink()
    train_ensemble(kept, FakeTrainer())
    assert (members[0] / "checkpoint.pt").is_file()
    again = FakeTrainer()
    train_ensemble(cfg, again)
    assert again.configs == [] and not (members[0] / "checkpoint.pt").exists()
    assert (members[1] / "checkpoint.pt").is_file()


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
    assert out.index("[plan t] will train 3 members x 3 trainings") < out.index("step 1/7 prepare")
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
    for decoder in cfg.decoding.decoders:  # accuracy and distinct labels of the last round = its submission's
        submitted = pd.read_csv(cfg.layout.submission(decoder)).set_index("annotation_id")["concept_name"]
        truth = pd.read_csv(cfg.solution).set_index("annotation_id")["concept_name"].loc[submitted.index]
        assert rounds[2][f"test_acc_{decoder}"] == pytest.approx((submitted == truth).mean())
        assert rounds[2][f"distinct_{decoder}"] == submitted.nunique()
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


# ------------------------------------------------------------- stages alone, locks, early validation
def _config_file(cfg: PipelineConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_a_stage_alone_checks_the_fingerprint_and_never_rewrites_a_trained_round(cfg, tmp_path, capsys):
    pipeline_stage.run_pipeline(cfg, FakeTrainer())
    config = _config_file(cfg, tmp_path / "pipeline.yaml")
    pseudo = cfg.layout.pseudo_labels(1)
    before = pseudo.read_bytes()
    capsys.readouterr()
    assert pseudo_label_stage.main([str(config), "--round", "1", "pseudo.u_threshold=0.5"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "name=t_2" in err and pseudo.read_bytes() == before
    assert train_ensemble_stage.main([str(config), "train_overrides.train.epochs=30"]) == 2
    out, err = capsys.readouterr()
    assert "done, skipped" not in out and "different config" in err and "name=t_2" in err
    assert pseudo_label_stage.main([str(config), "--round", "1"]) == 0  # the same config: nothing changes
    assert pseudo.read_bytes() == before

    # beneath the fingerprint (a run without state.json): a trained round's inputs and members are kept
    cfg.layout.state.unlink()
    changed = cfg.model_copy(update={"pseudo": cfg.pseudo.model_copy(update={"u_threshold": 0.5})})
    with pytest.raises(StageError, match=r"is what round 1's members .* were trained on.*name=t_2"):
        make_pseudo_labels(changed, 1)
    assert pseudo.read_bytes() == before
    other_views = cfg.model_copy(update={"train_overrides": {"train": {"tta_views": ["identity", "hflip"]}}})
    with pytest.raises(StageError, match=r"trained with another config \(train.tta_views\)"):
        train_ensemble(other_views, FakeTrainer())  # resumable, but a finished member's predictions are final
    Path(cfg.train_config).write_text("train:\n  epochs: 30\n")
    with pytest.raises(StageError, match=r"trained with another config \(train.epochs\)"):
        train_ensemble(cfg, FakeTrainer())


def test_a_run_in_use_stops_the_pipeline_and_the_stages(cfg, tmp_path, capsys):
    config = _config_file(cfg, tmp_path / "pipeline.yaml")
    with run_lock(cfg.layout.root):  # stands for a pipeline or stage still working in the run
        with pytest.raises(RunLockedError, match=r"in use by pid \d+ on host .*--wait"):
            pipeline_stage.run_pipeline(cfg, FakeTrainer())
        assert submit_stage.main([str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "in use by pid" in err and len(err.strip().splitlines()) == 1
    assert not cfg.layout.state.exists()


def test_a_resumed_pipeline_removes_the_temporary_files_of_the_killed_one(cfg):
    with pytest.raises(KeyboardInterrupt):
        pipeline_stage.run_pipeline(cfg, FakeTrainer(fail_at_call=2))
    subs = Path(cfg.submissions_dir)
    subs.mkdir()
    stale = [cfg.layout.root / ".state.json.a1b2.tmp", cfg.layout.round_dir(0) / ".x.csv.c3.tmp",
             subs / ".t_argmax.csv.d4.tmp"]
    other_runs = subs / ".other_argmax.csv.e5.tmp"
    for path in [*stale, other_runs]:
        path.write_text("partial")
    pipeline_stage.run_pipeline(cfg, FakeTrainer())
    assert not any(p.exists() for p in stale) and other_runs.exists()


def test_a_typo_in_train_overrides_stops_before_any_step(cfg, tmp_path, capsys):
    bad = cfg.model_copy(update={"train_overrides": {"optim": {"lrate": 1}}})
    with pytest.raises(ConfigError, match="optim.lrate"):
        pipeline_stage.run_pipeline(bad, FakeTrainer())
    assert not cfg.layout.state.exists()  # nothing ran, no fingerprint recorded: fix the typo and go on
    config = _config_file(cfg, tmp_path / "pipeline.yaml")
    assert pipeline_stage.main([str(config), "train_overrides.optim.lrate=1"]) == 2
    assert "unknown key 'optim.lrate'" in capsys.readouterr().err and not cfg.layout.state.exists()


def test_submit_refuses_predictions_made_from_missing_pixels_unless_allowed(cfg, capsys):
    train_ensemble(cfg, FakeTrainer())
    done = cfg.layout.member_dir(0, 11) / "done.json"
    done.write_text(json.dumps({"seed": 11, "test_missing_pixels": 4}))
    with pytest.raises(StageError, match="predicted 4 test ROIs without pixels"):
        submit_stage.submit(cfg, r=0)
    assert not cfg.layout.submission("argmax").exists()
    allowed = cfg.model_copy(update={"allow_missing_test": True})
    assert build_member_config(allowed, 0, 10).data.allow_missing_test
    assert not build_member_config(cfg, 0, 10).data.allow_missing_test
    submit_stage.submit(allowed, r=0)
    assert "warning: " in capsys.readouterr().out and cfg.layout.submission("argmax").is_file()


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
    first = proc.stdout.read()  # the plan follows the prepare step that generated dataset_train.json
    assert first.index("step 1/5 prepare: done") < first.index("[plan tiny] will train 2 members x 2 trainings")
    state = json.loads((run / "state.json").read_text())
    assert list(state["finished"]) == ["prepare", "train_ensemble", "pseudo_label_1"]
    pseudo_before = (run / "round_1" / "pseudo_labels.csv").read_bytes()

    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for step in ("prepare", "train_ensemble", "pseudo_label_1"):
        assert f"{step}: already done" in out
    assert "member seed 0 (1/2): done, skipped" in out and "member seed 1 (2/2): training" in out
    assert out.index("[plan tiny] will train") < out.index("step 1/5 prepare")
    members = [run / f"round_{r}" / "members" / f"seed_{s}" for r in (0, 1) for s in (0, 1)]
    # finished members keep model.pt only (keep_checkpoints: false), the one done before the kill too
    assert all((m / "model.pt").is_file() and not (m / "checkpoint.pt").exists() for m in members)
    assert (run / "round_1" / "pseudo_labels.csv").read_bytes() == pseudo_before
    summary = json.loads((run / "summary.json").read_text())
    assert [row["round"] for row in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["pseudo_labels"] > 0 and 0 <= summary["rounds"][1]["test_bayes"] <= 12
    test_ids = pd.read_csv(tmp_path / "tiny" / "solution.csv")["annotation_id"].tolist()
    for decoder in ("argmax", "vote", "bayes", "bayes_cal", "diffusion"):
        assert validate_submission(tmp_path / "subs" / f"tiny_{decoder}.csv", test_ids, TAX) == []

