"""A device or precision that was asked for and is missing is a one-line error with exit code 2 before
the run folder exists (defect 4); 'auto' keeps choosing."""
from pathlib import Path

import pytest
import torch

import main as main_script
from src.predict import main as predict_main

REPO = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


@no_cuda
def test_pick_device_refuses_a_missing_device_and_auto_chooses():
    from src.runtime import DeviceError, check_amp, pick_device

    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1", "bogus", "mps"):
        with pytest.raises(DeviceError):
            pick_device(name)
    with pytest.raises(DeviceError, match="fp16"):
        check_amp("fp16", torch.device("cpu"))
    with pytest.raises(DeviceError, match="bf16"):
        check_amp("bf16", torch.device("cpu"))
    check_amp("auto", torch.device("cpu"))
    check_amp("off", torch.device("cpu"))


@no_cuda
@pytest.mark.parametrize("overrides, message", [
    (["train.device=cuda"], "CUDA is not available"),
    (["train.device=cuda:1"], "CUDA is not available"),
    (["train.device=cpu", "train.amp=fp16"], "train.amp=fp16 needs a CUDA device"),
    (["train.amp=bf16"], "train.amp=bf16 needs a CUDA device"),
])
def test_main_refuses_a_missing_device_before_the_run_folder(tiny_root, tmp_path, capsys, overrides, message):
    args = [str(REPO / "cfg" / "demo_tiny.yaml"), f"data.root={tiny_root}", f"output.dir={tmp_path / 'out'}",
            "train.progress=false", *overrides]
    assert main_script.main(args) == 2
    assert message in one_line(capsys)
    assert not (tmp_path / "out").exists()


@no_cuda
def test_predict_refuses_a_missing_device(tmp_path, capsys):
    from tests.test_package import fake_member

    fake_member(tmp_path / "run", 0)
    (tmp_path / "rois").mkdir()
    for device in ("cuda", "cuda:1"):
        assert predict_main([str(tmp_path / "run"), str(tmp_path / "rois"), "--out", str(tmp_path / "p.csv"),
                             "--device", device,
                             "--work", str(tmp_path / "work"), "--no-progress"]) == 2
        assert "CUDA is not available" in one_line(capsys)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "work").exists()


def test_stages_report_a_missing_device_as_a_stage_error(monkeypatch):
    import src.train
    from src.runtime import DeviceError
    from src.serialization import UnsafeFileError
    from src.stages.cli import StageError
    from src.stages.members import train_member

    for error in (DeviceError("device 'cuda' was asked for"), UnsafeFileError("x.pt: refusing to load")):
        def failing(config, error=error):
            raise error
        monkeypatch.setattr(src.train, "train", failing)
        with pytest.raises(StageError, match=str(error)):
            train_member(None)
