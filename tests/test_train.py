"""End-to-end training on the generated 'tiny' benchmark: artefacts, exact resumption, NaN stop, DDP."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import src.train as train_module
from src.checkpoint import config_differences
from src.config import Config, load_config
from src.data.training import DataMissingError, build_datasets, load_split
from src.ensemble import decode_bayes
from src.score import classification_metrics
from src.taxonomy import load_taxonomy, taxonomy_tree
from src.train import TrainingDiverged, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = {"epoch_seconds", "train_img_per_s"}


def _cfg(root, out, *overrides):
    return load_config(Config, os.path.join(REPO, "cfg", "demo_tiny.yaml"),
                       [f"data.root={root}", f"output.dir={out}", *overrides])


def test_train_writes_the_contracted_artefacts(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "data.shifted_val=true", f"data.solution={tiny_root / 'solution.csv'}",
               "model.aux_ranks=[phylum,order]", "train.epochs=1")
    run = train(cfg)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "checkpoint.pt", "model.pt", "metrics.csv", "curves.png", "done.json", "test_probs.npz",
            "predictions.csv", "val_probs.npz", "val_predictions.csv"} <= names
    classes = load_taxonomy().names
    test = np.load(run / "test_probs.npz")
    assert test["probs"].shape == (2, 80, 79) and test["probs"].dtype == np.float32
    assert np.allclose(test["probs"].sum(-1), 1, atol=1e-5)
    assert tuple(test["classes"]) == classes
    preds = pd.read_csv(run / "predictions.csv")
    assert list(preds.columns) == ["annotation_id", "concept_name", "confidence"]
    assert sorted(preds.annotation_id) == sorted(test["annotation_id"]) and preds.concept_name.isin(classes).all()
    val = np.load(run / "val_probs.npz")
    assert val["labels"].shape == val["annotation_id"].shape == (val["probs"].shape[1],)
    metrics = pd.read_csv(run / "metrics.csv")
    for column in ("val_loss", "val_accuracy", "val_distance", "val_distance_bayes", "val_acc_phylum",
                   "shifted_distance", "train_loss", "lr"):
        assert column in metrics and np.isfinite(metrics[column]).all()
    done = pd.read_json(run / "done.json", typ="series")
    assert done["test_n"] == 80 and 0 <= done["test_distance"] <= 12
    assert load_config(Config, run / "config.yaml") == cfg
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg)
    assert train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": True})})) == run


@pytest.fixture(scope="module")
def uninterrupted(tiny_root, tmp_path_factory):
    """A 3-epoch tiny run in one go, with the default checkpointing (full checkpoint every epoch)."""
    return train(_cfg(tiny_root, tmp_path_factory.mktemp("uninterrupted"), "train.epochs=3", "output.run_name=full"))


def assert_same_run(a, b):
    """Two finished run folders hold the same weights, metrics (but timings) and test probabilities, exactly."""
    wa, wb = (torch.load(r / "model.pt", weights_only=True) for r in (a, b))
    assert wa["epoch"] == wb["epoch"] == torch.load(b / "checkpoint.pt", weights_only=True)["epoch"]
    for key in wa["model"]:
        assert torch.equal(wa["model"][key], wb["model"][key]), key
    ma, mb = (pd.read_csv(r / "metrics.csv").drop(columns=list(TIMING)) for r in (a, b))
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)
    assert np.array_equal(np.load(a / "test_probs.npz")["probs"], np.load(b / "test_probs.npz")["probs"])


def kill_in_epoch(monkeypatch, n: int) -> None:
    """Make the n-th train_one_epoch call of the next training raise KeyboardInterrupt (a kill)."""
    real_epoch, calls = train_module.train_one_epoch, []

    def killed(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(train_module, "train_one_epoch", killed)


def test_resume_reproduces_the_uninterrupted_run(tiny_root, tmp_path, uninterrupted):
    part = train(_cfg(tiny_root, tmp_path, "train.epochs=3", "output.run_name=part", "train.max_epochs_this_run=1"))
    assert not (part / "done.json").exists()
    assert len(pd.read_csv(part / "metrics.csv")) == 1
    train(_cfg(tiny_root, tmp_path, "train.epochs=3", "output.run_name=part", "train.resume=true"))
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (uninterrupted, part))
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert_same_run(uninterrupted, part)


def test_sparse_full_checkpoints_resume_from_the_full_one(tiny_root, tmp_path, uninterrupted, monkeypatch, capsys):
    """model.pt every epoch, checkpoint.pt every 3rd (and at a planned stop); a kill after a weights-only epoch
    resumes from the older full checkpoint, says so, and ends exactly as the uninterrupted run."""
    args = ("train.epochs=3", "output.run_name=sparse", "train.full_checkpoint_every=3")
    run = train(_cfg(tiny_root, tmp_path, *args, "train.max_epochs_this_run=1"))
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1  # a planned stop writes it
    kill_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_root, tmp_path, *args, "train.resume=true"))
    monkeypatch.undo()
    weights, full = (torch.load(run / name, weights_only=True) for name in ("model.pt", "checkpoint.pt"))
    assert (weights["epoch"], full["epoch"]) == (2, 1)
    assert set(weights) == {"model", "epoch", "config", "classes"} and tuple(weights["classes"]) == load_taxonomy().names
    # the AdamW moments make the full checkpoint about 3x the weights
    assert (run / "checkpoint.pt").stat().st_size > 2.5 * (run / "model.pt").stat().st_size
    capsys.readouterr()
    train(_cfg(tiny_root, tmp_path, *args, "train.resume=true"))
    out = capsys.readouterr().out
    assert "resuming" in out and "after epoch 1" in out and "model.pt holds epoch 2" in out
    assert_same_run(uninterrupted, run)


def test_weights_only_checkpoint_without_a_full_one(tiny_root, tmp_path, monkeypatch, capsys):
    """Killed before the first full checkpoint: the run folder is taken (no silent overwrite), and a resume
    starts again from epoch 0, saying why."""
    cfg = _cfg(tiny_root, tmp_path, "train.epochs=2", "train.full_checkpoint_every=5")
    kill_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    run = tmp_path / cfg.output.run_name
    assert sorted(p.name for p in run.glob("*.pt")) == ["model.pt"]
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg)
    capsys.readouterr()
    train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": True})}))
    assert "no full checkpoint.pt to continue from: training starts again from epoch 0" in capsys.readouterr().out
    assert (run / "done.json").exists() and len(pd.read_csv(run / "metrics.csv")) == 2
    done = json.loads((run / "done.json").read_text())  # what the run's numbers depend on
    assert torch.__version__.startswith(done["packages"]["torch"]) and done["packages"]["numpy"] == np.__version__
    assert done["cpu"] and done["gpu"] is None  # a CPU run


def test_batched_augmentation_trains_and_resumes_exactly(tiny_root, tmp_path):
    """augment.batched: the loader yields uint8 crops, the loop augments them; a split run equals an
    uninterrupted one bit for bit."""
    args = ("augment.batched=true", "train.epochs=3", "augment.downscale=[0.5,1.0]")
    taxonomy = load_taxonomy()
    cfg = _cfg(tiny_root, tmp_path, *args)
    caches = [load_split(cfg, taxonomy, s, progress=False) for s in ("train", "test")]
    data = build_datasets(cfg, taxonomy, *caches)
    x, _ = data.train[0]
    assert x.dtype == torch.uint8 and x.shape == (1, 16, 16, 3)  # raw cached view: augmented on the device
    assert data.val["val"][0][0].dtype == torch.float32  # evaluation is unchanged
    full = train(_cfg(tiny_root, tmp_path, *args, "output.run_name=full"))
    metrics = pd.read_csv(full / "metrics.csv")
    assert len(metrics) == 3 and np.isfinite(metrics[["train_loss", "val_loss"]]).all().all()
    part = train(_cfg(tiny_root, tmp_path, *args, "output.run_name=part", "train.max_epochs_this_run=2"))
    assert not (part / "done.json").exists()
    train(_cfg(tiny_root, tmp_path, *args, "output.run_name=part", "train.resume=true"))
    assert_same_run(full, part)


def test_loss_options_views_and_set_targets_train_and_resume_exactly(tiny_root, tmp_path):
    """FIERCE, the average-K head, rank heads on coarse pseudo-labels and three test-time views together."""
    taxonomy = load_taxonomy()
    cache = load_split(_cfg(tiny_root, tmp_path), taxonomy, "test", progress=False)
    ids = cache.index.annotation_id.to_numpy()[:6]
    pd.DataFrame({"annotation_id": ids, "concept_name": ["Sebastes"] * 6,
                  "target_taxon": ["", "Sebastes", "Sebastidae", "", "Cnidaria", ""]}).to_csv(tmp_path / "pl.csv",
                                                                                               index=False)
    options = ["train.epochs=2", "model.avgk_head=true", "loss.fierce_lambda=0.1", "model.aux_ranks=[phylum,order]",
               f"data.pseudo_labels={tmp_path / 'pl.csv'}", "train.tta_views=[identity,hflip,down75]"]
    full = train(_cfg(tiny_root, tmp_path, *options, "output.run_name=full"))
    train(_cfg(tiny_root, tmp_path, *options, "output.run_name=part", "train.max_epochs_this_run=1"))
    part = train(_cfg(tiny_root, tmp_path, *options, "output.run_name=part", "train.resume=true"))
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (full, part))
    assert "avgk.weight" in a["model"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ma, mb = (pd.read_csv(r / "metrics.csv").drop(columns=list(TIMING)) for r in (full, part))
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)
    for split in ("test", "val"):
        za, zb = (np.load(r / f"{split}_probs.npz") for r in (full, part))
        assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files)
    test = np.load(full / "test_probs.npz")
    assert tuple(test["views"]) == ("identity", "hflip", "down75") and test["view_probs"].shape == (3, 2, 80, 79)
    assert np.array_equal(test["probs"], test["view_probs"].mean(axis=0))  # probs: the mean over the views
    assert not np.array_equal(test["view_probs"][0], test["view_probs"][1])
    assert test["avgk_scores"].shape == (80, 79) and ((test["avgk_scores"] > 0) & (test["avgk_scores"] < 1)).all()
    assert np.array_equal(test["image_id"], cache.index.image_id.to_numpy())
    preds = pd.read_csv(full / "predictions.csv")  # decoded from the view mean
    assert (preds.concept_name.to_numpy() == np.array(taxonomy.names)[test["probs"].mean(0).argmax(1)]).all()
    val = np.load(full / "val_probs.npz")
    train_index = load_split(_cfg(tiny_root, tmp_path), taxonomy, "train", progress=False).index
    frames = train_index.set_index("annotation_id").loc[val["annotation_id"], "image_id"]
    assert np.array_equal(val["image_id"], frames.to_numpy())


def test_resume_refuses_a_changed_config(tiny_root, tmp_path):
    train(_cfg(tiny_root, tmp_path, "train.epochs=2", "train.max_epochs_this_run=1"))
    with pytest.raises(ValueError, match="optim.lr"):
        train(_cfg(tiny_root, tmp_path, "train.epochs=2", "train.resume=true", "optim.lr=0.1"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tiny_root, tmp_path, monkeypatch):
    real_build = train_module.build_loss

    def nan_after(cfg, taxonomy):
        inner, calls = real_build(cfg, taxonomy), []

        def loss(logits, targets):
            if logits.requires_grad:
                calls.append(1)
            value = inner(logits, targets)
            return value * float("nan") if len(calls) == 11 else value
        return loss

    monkeypatch.setattr(train_module, "build_loss", lambda cfg, tax: _Wrap(nan_after(cfg, tax)))
    cfg = _cfg(tiny_root, tmp_path, "train.epochs=3")
    with pytest.raises(TrainingDiverged, match=r"nan at epoch 2/3, step \d+ \(global step 11\).*after epoch 1"):
        train(cfg)
    run = tmp_path / cfg.output.run_name
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (run / "done.json").exists()


class _Wrap(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, logits, targets):
        return self.fn(logits, targets)


def test_pseudo_labels_join_the_training_set(tiny_root, tmp_path):
    taxonomy = load_taxonomy()
    cfg = _cfg(tiny_root, tmp_path)
    train_cache, test_cache = (load_split(cfg, taxonomy, s, progress=False) for s in ("train", "test"))
    base = build_datasets(cfg, taxonomy, train_cache, test_cache)
    ids = test_cache.index.annotation_id.to_numpy()[[3, 10, 20]]
    pd.DataFrame({"annotation_id": ids, "concept_name": ["Octopus rubescens", "Porifera", "Sebastes"]}).to_csv(
        tmp_path / "pl.csv", index=False)
    cfg2 = _cfg(tiny_root, tmp_path, f"data.pseudo_labels={tmp_path / 'pl.csv'}")
    data = build_datasets(cfg2, taxonomy, train_cache, test_cache)
    assert len(data.train) == len(base.train) + 3
    pseudo_part = data.train.datasets[-1]
    assert [pseudo_part[i][1] for i in range(3)] == [taxonomy.index(n) for n in
                                                     ("Octopus rubescens", "Porifera", "Sebastes")]
    assert not data.set_targets
    tree = taxonomy_tree(taxonomy)
    pd.DataFrame({"annotation_id": ids, "concept_name": ["Octopus rubescens", "Porifera", "Sebastes"],
                  "target_taxon": ["", "Porifera", "Sebastidae"]}).to_csv(tmp_path / "coarse.csv", index=False)
    data = build_datasets(_cfg(tiny_root, tmp_path, f"data.pseudo_labels={tmp_path / 'coarse.csv'}"), taxonomy,
                          train_cache, test_cache)
    assert data.set_targets and [data.train.datasets[-1][i][1] for i in range(3)] == [
        taxonomy.index("Octopus rubescens"), 79 + tree.taxon_node("Porifera"), 79 + tree.taxon_node("Sebastidae")]
    pd.DataFrame({"annotation_id": [ids[0]], "concept_name": ["Nessie"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="unknown concept"):
        build_datasets(_cfg(tiny_root, tmp_path, f"data.pseudo_labels={tmp_path / 'bad.csv'}"), taxonomy,
                       train_cache, test_cache)


def test_missing_data_names_the_fetch_commands(tmp_path):
    with pytest.raises(DataMissingError, match="src.data.fetch --competition fathomnet-2025"):
        train(_cfg(tmp_path / "nowhere", tmp_path))


def test_main_reports_missing_data_and_bad_keys(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    run = lambda *a: subprocess.run([sys.executable, "main.py", *a], cwd=REPO, capture_output=True, text=True,  # noqa: E731
                                    env=env, timeout=120)
    missing = run("cfg/wrn_dwce.yaml", f"data.root={tmp_path / 'fathomnet2025'}")
    assert missing.returncode == 2 and "python -m src.data.download" in missing.stderr
    bad = run("cfg/demo_tiny.yaml", "optim.lrate=1")
    assert bad.returncode == 2 and "valid keys here" in bad.stderr and "weight_decay" in bad.stderr


def test_metrics_pure_functions():
    D = np.array([[0, 2, 8], [2, 0, 8], [8, 8, 0]])
    probs = np.array([[0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    # argmax says class 0; expected distances: k=0: 0.7+2.0=2.7, k=1: 0.8+2.0=2.8, k=2: 3.2+2.8=6.0.
    assert decode_bayes(probs, D).tolist() == [0, 2]
    probs2 = np.array([[0.45, 0.1, 0.45 + 1e-3]])  # argmax 2, but 0 is closer to everything likely
    assert decode_bayes(probs2, D).tolist() == [0]
    rank = {"phylum": np.array([0, 0, 1]), "genus": np.array([0, 1, -1])}
    m = classification_metrics(probs2, np.array([1]), D, rank)
    assert m["accuracy"] == 0 and m["distance"] == 8 and m["distance_bayes"] == 2
    assert m["acc_phylum"] == 0 and m["acc_genus"] == 0
    assert config_differences({"a": {"b": 1}, "train": {"resume": False}}, {"a": {"b": 2}, "train": {"resume": True}}) \
        == ["a.b"]
    # test-time views only change the final predictions: a checkpoint saved before the key existed resumes
    assert config_differences({"train": {}}, {"train": {"tta_views": ["identity", "hflip"]}}) == []
    # a key added since the checkpoint was saved counts as its default there
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 1, "new": 0}}, defaults={"a": {"new": 0}}) == []
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 1, "new": 1}}, defaults={"a": {"new": 0}}) == ["a.new"]
    # both at once: a custom ignore list and the defaults
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 2, "new": 0}}, ("a.b",), {"a": {"new": 0}}) == []
    assert config_differences({"a": {}}, {"a": {"b": 2, "new": 1}}, ("a.b",), {"a": {"new": 0}}) == ["a.new"]


def test_torchrun_two_processes_gloo(tiny_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main.py",
           "cfg/demo_tiny.yaml", f"data.root={tiny_root}", f"output.dir={tmp_path}", "train.epochs=1",
           "train.device=cpu"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "demo_tiny"
    assert (run / "done.json").exists()
    assert np.load(run / "test_probs.npz")["probs"].shape == (2, 80, 79)
    assert len(pd.read_csv(run / "metrics.csv")) == 1


def test_context_views_with_attention_fusion(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "data.views=[roi,ctx3]", "model.fusion=attention", "train.epochs=1",
               "data.val_fraction=0")
    run = train(cfg)
    assert np.load(run / "test_probs.npz")["probs"].shape == (2, 80, 79)
    assert not (run / "val_probs.npz").exists()
