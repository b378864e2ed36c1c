"""src.stages.package on a fake finished run (tiny untrained models, no training): layout, manifest,
slim weights that predict like the checkpoints, refusal to overwrite, no partial folder, clear errors."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from src.artifacts import atomic_save_npz, atomic_write_json, atomic_write_text
from src.config import Config, config_to_yaml, load_config
from src.decoding import fit_validation_temperature, load_predictions
from src.inference import load_member, predict_crops
from src.manifest import find_manifest, read_package
from src.models import build_model
from src.stages import package as package_stage
from src.stages.cli import StageError
from src.stages.package import package
from src.stages.pipeline_config import PipelineConfig, load_pipeline_config
from src.taxonomy import load_taxonomy

REPO = Path(__file__).resolve().parents[1]
TAX = load_taxonomy()
C = len(TAX)


def fake_member(run_dir: Path, seed: int, with_val: bool = True) -> None:
    """What src.train leaves in a finished run folder, with an untrained tiny model."""
    cfg = load_config(Config, REPO / "cfg" / "demo_tiny.yaml", [f"seed={seed}"])
    torch.manual_seed(seed)
    model = build_model(cfg, C)
    run_dir.mkdir(parents=True)
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    torch.save({"model": model.state_dict(), "optimizer": {"state": {"big": torch.zeros(1000)}}, "epoch": 2,
                "classes": list(TAX.names), "config": cfg.model_dump(mode="json")}, run_dir / "checkpoint.pt")
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(C), size=(2, 12)).astype(np.float32)
    atomic_save_npz(run_dir / "test_probs.npz", annotation_id=np.arange(12), probs=probs, classes=np.array(TAX.names))
    if with_val:
        atomic_save_npz(run_dir / "val_probs.npz", annotation_id=np.arange(8), probs=probs[:, :8],
                        classes=np.array(TAX.names), labels=rng.integers(0, C, 8))
    (run_dir / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    atomic_write_json(run_dir / "done.json", {"seed": seed})


@pytest.fixture
def cfg(tmp_path) -> PipelineConfig:
    cfg = PipelineConfig(name="fake", data_root=str(tmp_path / "data"), seeds=[3, 4], rounds=1,
                         output_root=str(tmp_path / "out"), submissions_dir=str(tmp_path / "subs"))
    for seed in cfg.seeds:
        fake_member(cfg.layout.member_dir(1, seed), seed)
    return cfg


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_package_holds_members_code_and_manifest(cfg, tmp_path):
    run_before = tree_digest(cfg.layout.root)
    out = package(cfg, tmp_path / "upload" / "pkg", kaggle_id="someone/fathomnet-fake")
    root, manifest = read_package(out, verify=True)
    assert root == out and cfg.layout.root.exists()
    assert tree_digest(cfg.layout.root) == run_before  # inputs untouched
    assert [m["seed"] for m in manifest["members"]] == [3, 4] and manifest["round"] == 1
    assert manifest["decoder"] == "bayes" and manifest["decoders"] == cfg.decoding.decoders
    members = [cfg.layout.member_dir(1, s) for s in cfg.seeds]
    assert manifest["decoding"]["temperature"] == fit_validation_temperature(load_predictions(members, "val", TAX))
    assert json.loads((out / "classes.json").read_text()) == list(TAX.names)
    assert load_pipeline_config(out / "pipeline.yaml") == cfg
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "someone/fathomnet-fake"
    # the project's code and taxonomy, without caches
    assert (out / "src" / "predict.py").is_file() and (out / "src" / "stages" / "package.py").is_file()
    assert not (out / "src" / "synthetic").exists()  # the generator is research scaffolding, not inference
    assert (out / manifest["taxonomy_file"]).is_file()
    assert not list(out.rglob("__pycache__"))
    assert not [p for p in (tmp_path / "upload").iterdir() if p.name != "pkg"]  # no temporary folder left
    # slim weights: no optimiser state, and they predict exactly like the training checkpoint
    slim = torch.load(out / "members" / "seed_3" / "model.pt", weights_only=True)
    assert set(slim) == {"model", "classes", "config", "epoch"}
    crops = np.random.default_rng(0).integers(0, 256, size=(5, 1, 16, 16, 3), dtype=np.uint8)
    from_package = predict_crops(load_member(out / "members" / "seed_3", device="cpu"), crops)
    from_run = predict_crops(load_member(members[0], device="cpu"), crops)
    assert from_package.shape == (2, 5, C)
    np.testing.assert_array_equal(from_package, from_run)
    assert not np.array_equal(from_package, predict_crops(load_member(members[1], device="cpu"), crops))


def test_package_never_overwrites_and_leaves_nothing_half_made(cfg, tmp_path, monkeypatch):
    existing = tmp_path / "pkg"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(StageError, match="already exists"):
        package(cfg, existing)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]

    def broken(checkpoint, out):
        raise OSError("disk full")

    monkeypatch.setattr(package_stage, "slim_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        package(cfg, tmp_path / "other")
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other.*"))


@pytest.mark.parametrize("problem, message", [
    ("unfinished", "not finished"),
    ("no_val", "bayes_cal needs validation"),
    ("decoder", "not among the configured decoders"),
    ("kaggle_id", "USER/dataset-slug"),
])
def test_package_errors_are_clear(tmp_path, problem, message):
    cfg = PipelineConfig(name="e", data_root=str(tmp_path / "data"), seeds=[0], rounds=0,
                         output_root=str(tmp_path / "out"), decoding={"decoders": ["bayes", "bayes_cal"]})
    fake_member(cfg.layout.member_dir(0, 0), 0, with_val=problem != "no_val")
    kwargs = {"decoder": "bayes_cal" if problem == "no_val" else "vote" if problem == "decoder" else None,
              "kaggle_id": "no-slash" if problem == "kaggle_id" else None}
    if problem == "unfinished":
        (cfg.layout.member_dir(0, 0) / "done.json").unlink()
    with pytest.raises(StageError, match=message):
        package(cfg, tmp_path / "pkg", **kwargs)
    assert not (tmp_path / "pkg").exists()


def test_cli_and_read_package_checks(cfg, tmp_path, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    out = tmp_path / "nested" / "pkg"
    assert package_stage.main([str(config), "rounds=1", "--out", str(out), "--decoder", "argmax"]) == 0
    assert json.loads((out / "manifest.json").read_text())["decoder"] == "argmax"
    assert package_stage.main([str(config), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert find_manifest(tmp_path / "nested") == out / "manifest.json"  # found one level down
    with pytest.raises(FileNotFoundError, match="src.stages.package"):
        find_manifest(tmp_path / "data")
    with open(out / "members" / "seed_4" / "model.pt", "ab") as f:
        f.write(b"tampered")
    read_package(out)  # checksums only checked on request
    with pytest.raises(ValueError, match="checksum"):
        read_package(tmp_path / "nested", verify=True)


def test_default_decoder_prefers_frame_bayes_when_it_can_be_fitted():
    def cfg_with(decoders):
        return PipelineConfig(data_root="x", decoding={"decoders": decoders})

    every = ["argmax", "vote", "bayes", "bayes_cal", "diffusion", "frame_bayes", "frame_argmax"]
    assert package_stage.default_decoder(cfg_with(every)) == "frame_bayes"
    assert package_stage.default_decoder(cfg_with(every), frame_prior_fitted=False) == "bayes"  # no validation split
    assert package_stage.default_decoder(cfg_with(["argmax", "bayes"])) == "bayes"
    assert package_stage.default_decoder(cfg_with(["vote", "argmax"])) == "vote"


def test_preferred_decoder_order():
    from src.decoding import preferred_decoder

    assert preferred_decoder(["argmax", "bayes", "frame_bayes"]) == "frame_bayes"
    assert preferred_decoder(["argmax", "bayes"]) == "bayes"
    assert preferred_decoder(["diffusion", "argmax"]) == "diffusion"
