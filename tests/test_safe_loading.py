"""Loading a .pt file never runs code from it (defect 1): a crafted pickle in a member's model.pt, a
package member, model.pretrained_path or a run's checkpoint.pt is refused with a one-line error naming
the file, and its payload never runs."""
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import main as main_script
from src.inference import load_member
from src.predict import main as predict_main
from src.serialization import UnsafeFileError, load_state_file
from src.stages.cli import StageError
from src.stages.package import package
from tests.test_package import cfg, fake_member  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def craft(path: Path, marker: Path) -> Path:
    """A .pt file that looks like the project's (model, classes, config, epoch) with a payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(1)}, "classes": [], "epoch": 1, "config": {}, "x": Payload(marker)},
               path)
    return path


def one_line(err: str, path: Path) -> None:
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and "refusing to load" in err, err


def test_load_state_file_reads_plain_state_and_refuses_objects(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3, "rng": [("MT", [1, 2], 0)]}, tmp_path / "ok.pt")
    assert load_state_file(tmp_path / "ok.pt")["epoch"] == 3
    marker = tmp_path / "marker"
    with pytest.raises(UnsafeFileError, match="refusing to load"):
        load_state_file(craft(tmp_path / "evil.pt", marker))
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(UnsafeFileError, match="text.pt"):
        load_state_file(tmp_path / "text.pt")
    assert not marker.exists()


def test_a_crafted_member_model_pt_is_refused_by_predict(tmp_path, capsys):
    member = tmp_path / "run"
    fake_member(member, 0)
    (member / "checkpoint.pt").unlink()
    evil = craft(member / "model.pt", tmp_path / "marker")
    with pytest.raises(UnsafeFileError):
        load_member(member)
    (tmp_path / "rois").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "rois" / "a.png")
    assert predict_main([str(member), str(tmp_path / "rois"), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
    one_line(capsys.readouterr().err, evil)
    assert not (tmp_path / "marker").exists() and not (tmp_path / "p.csv").exists()


def test_a_crafted_package_member_is_refused(cfg, tmp_path):  # noqa: F811
    member = cfg.layout.member_dir(1, cfg.seeds[0])
    evil = craft(member / "checkpoint.pt", tmp_path / "marker")
    with pytest.raises(StageError, match=f"{evil}: refusing to load"):
        package(cfg, tmp_path / "pkg")
    assert not (tmp_path / "marker").exists() and not (tmp_path / "pkg").exists()


def test_a_crafted_pretrained_path_is_refused(tmp_path):
    from src.config import Config, load_config
    from src.models import build_model

    evil = craft(tmp_path / "pre.pt", tmp_path / "marker")
    config = load_config(Config, REPO / "cfg" / "demo_tiny.yaml", [f"model.pretrained_path={evil}"])
    with pytest.raises(UnsafeFileError, match="pre.pt"):
        build_model(config, 10)
    assert not (tmp_path / "marker").exists()


def test_a_crafted_checkpoint_is_refused_on_resume(tiny_root, tmp_path, capsys):
    run = tmp_path / "demo_tiny"
    craft(run / "checkpoint.pt", tmp_path / "marker")
    args = [str(REPO / "cfg" / "demo_tiny.yaml"), f"data.root={tiny_root}", f"output.dir={tmp_path}",
            "train.resume=true", "train.progress=false"]
    assert main_script.main(args) == 2
    one_line(capsys.readouterr().err, run / "checkpoint.pt")
    assert not (tmp_path / "marker").exists()
    craft(run / "model.pt", tmp_path / "marker")  # model.pt is read first (its epoch) when it exists
    assert main_script.main(args) == 2
    one_line(capsys.readouterr().err, run / "model.pt")
    assert not (tmp_path / "marker").exists()
