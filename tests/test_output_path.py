"""An output path never replaces an input, a project artefact, a folder or a device file (defect 2):
src.predict refuses such an --out (or --probs) before predicting, with a one-line error and exit code 2."""
import os
from pathlib import Path

import pytest

from src.artifacts import OutputPathError, check_output_path
from src.predict import main as predict_main
from tests.test_package import fake_member


def test_check_output_path_rules(tmp_path):
    run = tmp_path / "run"
    fake_member(run, 0)
    coco = tmp_path / "dataset_test.json"
    coco.write_text("{}")
    (tmp_path / "folder").mkdir()
    refused = {
        coco: "one of the command's inputs",
        run / "checkpoint.pt": "inside the input",
        run / "metrics.csv": "inside the input",
        tmp_path / "folder": "is a folder",
        tmp_path / "x" / "model.pt": "project artefact",
        tmp_path / "probs.npz": "project artefact",
        tmp_path / "c.yaml": "project artefact",
    }
    for out, message in refused.items():
        with pytest.raises(OutputPathError, match=message):
            check_output_path(out, inputs=(run, coco))
    # an existing file inside another run folder (not an input) is not replaced either
    other = tmp_path / "other"
    fake_member(other, 1)
    (other / "notes.csv").write_text("mine")
    with pytest.raises(OutputPathError, match="run, pipeline or package folder"):
        check_output_path(other / "notes.csv", inputs=(run, coco))
    # a fifo and a device
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OutputPathError, match="not a regular file"):
        check_output_path(tmp_path / "pipe")
    if Path("/dev/full").exists():
        with pytest.raises(OutputPathError, match="not a regular file"):
            check_output_path("/dev/full")
    # a symlink to an input is the input
    (tmp_path / "link.csv").symlink_to(coco)
    with pytest.raises(OutputPathError, match="inputs"):
        check_output_path(tmp_path / "link.csv", inputs=(coco,))
    # what is fine: a new or existing plain CSV elsewhere, a new file in a run folder, npz where allowed
    (tmp_path / "old.csv").write_text("x")
    for ok in (tmp_path / "new.csv", tmp_path / "old.csv", run / "mine.csv"):
        assert check_output_path(ok, inputs=(run, coco)) == ok
    assert check_output_path(tmp_path / "p.npz", allow_suffixes=(".npz",)) == tmp_path / "p.npz"


def test_predict_refuses_a_bad_out_before_predicting(tmp_path, capsys, monkeypatch):
    import src.predict as predict_module

    run = tmp_path / "run"
    fake_member(run, 0)
    rois = tmp_path / "rois"
    rois.mkdir()
    coco = tmp_path / "dataset_test.json"
    coco.write_text('{"images": [], "annotations": [], "categories": []}')

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before checking --out")

    monkeypatch.setattr(predict_module, "predict_members", no_prediction)
    before = {p: p.read_bytes() for p in (coco, run / "checkpoint.pt")}
    cases = [(coco, coco), (rois, run / "checkpoint.pt"), (rois, run / "config.yaml"), (rois, tmp_path),
             (rois, tmp_path / "model.pt")]
    if Path("/dev/full").exists():
        cases.append((rois, Path("/dev/full")))
    for source, out in cases:
        assert predict_main([str(run), str(source), "--out", str(out), "--no-progress",
                             "--work", str(tmp_path / "work")]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith("error: --out ") and len(err.strip().splitlines()) == 1, err
    assert predict_main([str(run), str(rois), "--out", str(tmp_path / "a.csv"), "--probs", str(coco)]) == 2
    assert "--probs" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before
