"""Training runs fail loudly instead of silently wrong (issue 12): ROIs without pixels, run-folder locks,
a separate crop-cache folder, stale temporary files, one-line errors of main.py, the missing-data hint.

Most tests use a copy of the session's 'tiny' benchmark (tests/conftest.py) with frames deleted."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import main as main_script
from src.artifacts import RunLockedError, run_lock
from src.config import Config, load_config
from src.data.cache import CropCache, load_or_build_crop_cache
from src.data.coco import load_coco
from src.data.training import DataMissingError, check_data, check_missing_pixels, load_split
from src.inference import MissingPixelsError, load_crops, read_roi_files
from src.stages.cli import StageError
from src.stages.pipeline_config import PipelineConfig
from src.stages.prepare import prepare
from src.taxonomy import load_taxonomy
from src.train import train

REPO = Path(__file__).resolve().parents[1]


def _cfg(root, out, *overrides):
    return load_config(Config, REPO / "cfg" / "demo_tiny.yaml", [f"data.root={root}", f"output.dir={out}", *overrides])


def _args(root, out, *overrides):
    return [str(REPO / "cfg" / "demo_tiny.yaml"), f"data.root={root}", f"output.dir={out}", *overrides]


def _copy_without_frames(tiny_root: Path, dest: Path, split: str, n_frames: int) -> tuple[Path, int]:
    """A copy of the benchmark (without its crop cache) whose `split` lacks its first n frames; returns
    (root, number of annotations of those frames)."""
    root = dest / "tiny"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("cache"))
    coco = load_coco(root / f"dataset_{split}.json")
    gone = sorted(coco.images)[:n_frames]
    for image_id in gone:
        (root / split / "images" / coco.frame_name(image_id)).unlink()
    return root, sum(int(a["image_id"]) in gone for a in coco.annotations)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------ 1. ROIs without pixels
def test_training_refuses_test_rois_without_pixels_unless_allowed(tiny_root, tmp_path, capsys):
    root, n_missing = _copy_without_frames(tiny_root, tmp_path, "test", 15)
    assert n_missing > 0
    with pytest.raises(DataMissingError, match=rf"{n_missing} of 80 test ROIs have no pixels") as err:
        train(_cfg(root, tmp_path / "runs"))
    assert f"python -m src.data.download {root}/dataset_test.json {root}/test" in str(err.value)
    assert "data.allow_missing_test=true" in str(err.value)
    assert main_script.main(_args(root, tmp_path / "runs")) == 2
    assert f"{n_missing} of 80 test ROIs have no pixels" in capsys.readouterr().err

    run = train(_cfg(root, tmp_path / "runs", "data.allow_missing_test=true", "train.epochs=1"))
    assert f"warning: {n_missing} of 80 test ROIs have no pixels" in capsys.readouterr().err
    done = json.loads((run / "done.json").read_text())
    assert done["test_missing_pixels"] == n_missing and done["train_dropped"] == 0


def test_training_drops_train_rois_without_pixels_up_to_a_limit(tiny_root, tmp_path, capsys):
    root, n_missing = _copy_without_frames(tiny_root, tmp_path, "train", 40)
    share = n_missing / 240
    assert share > 0.02
    with pytest.raises(DataMissingError, match=rf"{n_missing} of 240 labelled training ROIs .* have no pixels.*"
                                               r"data.max_missing_train_share=0.02"):
        train(_cfg(root, tmp_path / "runs"))
    run = train(_cfg(root, tmp_path / "runs", f"data.max_missing_train_share={share + 0.01:.3f}", "train.epochs=1"))
    err = capsys.readouterr().err
    assert f"warning: {n_missing} of 240 labelled training ROIs" in err and "training without them" in err
    assert f"python -m src.data.download {root}/dataset_train.json {root}/train" in err
    assert json.loads((run / "done.json").read_text())["train_dropped"] == n_missing


def _fake_cache(problems: list[str], labels: list[int]) -> CropCache:
    index = pd.DataFrame({"annotation_id": np.arange(len(problems)), "image_id": np.arange(len(problems)),
                          "label": labels, "problem": problems})
    return CropCache(np.zeros((len(problems), 1, 1, 1, 3), np.uint8), ("roi",), 1, index, Path("c"), ())


def test_missing_pixel_limit_counts_only_labelled_rows_without_pixels(tmp_path):
    """A bad box keeps its pixels (warned about, not limited); an unlabelled training row does not count."""
    problems = ["", "undecodable frame: file not found", "bad box: zero area", "", "image_id not in images",
                "undecodable frame: truncated", "", "", "", ""]
    train_cache = _fake_cache(problems, [0, 1, 2, 3, 4, -1, 5, 6, 7, 8])
    test_cache = _fake_cache(["", "bad box: zero area"], [-1, -1])
    assert train_cache.has_pixels.tolist() == [True, False, True, True, False, False] + [True] * 4
    at_limit = load_config(Config, None, [f"data.root={tmp_path}", "data.max_missing_train_share=0.2223"])
    warnings = check_missing_pixels(at_limit, train_cache, test_cache)  # 2 of 9 labelled rows (22.2%)
    assert len(warnings) == 2 and "2 of 9 labelled training ROIs (22.2%)" in warnings[0]
    assert "1 labelled training ROIs have a bad box" in warnings[1]
    with pytest.raises(DataMissingError, match="2 of 9 labelled training ROIs"):
        check_missing_pixels(at_limit.model_copy(update={"data": at_limit.data.model_copy(
            update={"max_missing_train_share": 0.2})}), train_cache, test_cache)


def test_prepare_refuses_test_rois_without_frames_unless_allowed(tiny_root, tmp_path, capsys):
    root, n_missing = _copy_without_frames(tiny_root, tmp_path, "test", 3)
    cfg = PipelineConfig(data_root=str(root), output_root=str(tmp_path / "out"))
    with pytest.raises(StageError, match=rf"{n_missing} of 80 test ROIs have no frame .*src.data.download .*"
                                         "allow_missing_test: true"):
        prepare(cfg)
    prepare(cfg.model_copy(update={"allow_missing_test": True}))
    assert f"warning: {n_missing} of 80 test ROIs have no frame" in capsys.readouterr().out


def test_prediction_refuses_frames_and_roi_files_without_pixels(tiny_root, tmp_path, capsys):
    root, n_missing = _copy_without_frames(tiny_root, tmp_path, "test", 5)
    with pytest.raises(MissingPixelsError, match=f"{n_missing} of 80 ROIs have no pixels"):
        load_crops(root / "dataset_test.json", tmp_path / "cache", 16, images_dir=root / "test" / "images",
                   progress=False)
    ids, crops = load_crops(root / "dataset_test.json", tmp_path / "cache", 16, images_dir=root / "test" / "images",
                            progress=False, allow_missing=True)
    assert len(ids) == 80 and int((crops.reshape(80, -1).max(axis=1) == 0).sum()) == n_missing
    rois = sorted((tiny_root / "test" / "rois").glob("*.png"))[:3] + [tmp_path / "absent.png"]
    with pytest.raises(MissingPixelsError, match="1 of 4 ROIs have no pixels"):
        read_roi_files(rois, 16, progress=False)
    assert not read_roi_files(rois, 16, progress=False, allow_missing=True)[3].any()


# ----------------------------------------------------------------------------------- 7. run locks
def test_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on host .*; use another name"):
            with run_lock(tmp_path / "run", advice="use another name"):
                pass
    holder = subprocess.Popen([sys.executable, "-c", "import time; from src.artifacts import run_lock\n"
                               f"with run_lock({str(tmp_path / 'run')!r}):\n"
                               " print('locked', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} "):
            with run_lock(tmp_path / "run"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path / "run"):  # the kernel released the dead holder's lock: no stale lock
        assert (tmp_path / "run" / ".lock").read_text().startswith(f"pid {os.getpid()} ")


def test_run_lock_waits_when_asked(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; from src.artifacts import run_lock\n"
                               f"with run_lock({str(tmp_path)!r}):\n print('locked', flush=True); time.sleep(1.0)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    start = time.monotonic()
    with run_lock(tmp_path, wait=True):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.3 and f"waiting for {tmp_path}, in use by pid {holder.pid}" in capsys.readouterr().err


def test_a_second_run_of_the_same_folder_stops_naming_the_first(tiny_root, tmp_path, capsys):
    cfg = _cfg(tiny_root, tmp_path)
    with run_lock(tmp_path / cfg.output.run_name):  # stands for a first run still training
        with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} .*output.wait_for_lock=true"):
            train(cfg)
        assert main_script.main(_args(tiny_root, tmp_path)) == 2
        assert f"in use by pid {os.getpid()}" in _one_line_error(capsys)
    assert not any((tmp_path / cfg.output.run_name / name).exists() for name in ("checkpoint.pt", "model.pt"))


# --------------------------------------------------------------------------- 8. cache_dir, 9. temps
def test_cache_dir_keeps_the_data_root_untouched(tiny_root, tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("cache"))
    cfg = _cfg(root, tmp_path, f"data.cache_dir={tmp_path / 'crops'}")
    cache = load_split(cfg, load_taxonomy(), "test", progress=False)
    assert cache.path.parent == tmp_path / "crops" and not (root / "cache").exists()


def test_a_resumed_run_removes_its_stale_temporary_files(tiny_root, tmp_path):
    run = train(_cfg(tiny_root, tmp_path, "train.epochs=2", "train.max_epochs_this_run=1"))
    stale = [run / ".curves.png.k2j3h4.tmp", run / ".checkpoint.pt.x8y9.tmp", run / ".model.pt.a1b2.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    train(_cfg(tiny_root, tmp_path, "train.epochs=2", "train.resume=true"))
    assert not any(p.exists() for p in stale) and (run / "done.json").is_file()


def test_a_cache_build_after_a_killed_one_removes_its_partial_crops(tiny_root, tmp_path):
    args = (tiny_root / "dataset_test.json", tiny_root / "test" / "images", tmp_path / "cache", 8)
    cache = load_or_build_crop_cache(*args, progress=False)
    (cache.path / "meta.json").unlink()  # as if killed before the build completed
    partial = cache.path / ".crops.npy.abc123.tmp"
    partial.write_bytes(b"\0" * 1000)
    rebuilt = load_or_build_crop_cache(*args, progress=False)
    assert rebuilt.path == cache.path and not partial.exists()


# ---------------------------------------------------------------------------- 10. one-line errors
def test_main_one_line_errors_for_binary_yaml_changed_resume_and_bad_pseudo_labels(tiny_root, tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main_script.main([str(binary)]) == 2
    assert "not a text file" in _one_line_error(capsys)

    assert main_script.main(_args(tiny_root, tmp_path, "train.epochs=2", "train.max_epochs_this_run=1")) == 0
    capsys.readouterr()
    assert main_script.main(_args(tiny_root, tmp_path, "train.epochs=2", "train.resume=true", "optim.lr=0.1")) == 2
    assert "differs from the checkpoint's in ['optim.lr']" in _one_line_error(capsys)

    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x01" * 64)
    (tmp_path / "columns.csv").write_text("id,name\n1,Porifera\n")
    for bad in ("absent.csv", "folder.csv", "binary.csv", "columns.csv"):
        code = main_script.main(_args(tiny_root, tmp_path, f"data.pseudo_labels={tmp_path / bad}",
                                      f"output.run_name=pl_{bad}"))
        assert code == 2 and f"data.pseudo_labels {tmp_path / bad}: " in _one_line_error(capsys), bad


def test_main_one_line_error_for_a_read_only_output_folder(tiny_root, tmp_path, capsys, monkeypatch):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root writes anyway: answer as the kernel would for others
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if str(self).startswith(str(read_only)):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main_script.main(_args(tiny_root, read_only)) == 1
    assert _one_line_error(capsys) == f"error: {read_only / 'demo_tiny'}: Permission denied\n"


@pytest.mark.parametrize("failure", ["oserror", "torch_runtime_error"])
def test_main_says_no_space_left_when_the_checkpoint_cannot_be_written(tiny_root, tmp_path, capsys, monkeypatch,
                                                                        failure):
    def full_disk_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        if failure == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        # what torch raises on a full disk: no errno, no "No space left on device"
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk_save)
    if failure == "torch_runtime_error":
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr("src.artifacts.shutil.disk_usage", lambda path: usage(10 << 30, 10 << 30, 4096))
    assert main_script.main(_args(tiny_root, tmp_path, "train.epochs=1")) == 1
    err = _one_line_error(capsys)
    assert "No space left on device" in err and "model.pt" in err  # the first file an epoch writes
    assert not list((tmp_path / "demo_tiny").glob(".*.tmp"))


# ------------------------------------------------------------------------------ 12. missing-data hint
def test_missing_data_hint_uses_the_generated_preset(tmp_path):
    empty = tmp_path / "synthetic" / "tiny"
    with pytest.raises(DataMissingError, match="--preset tiny --seed 0"):
        check_data(empty)
    generated = tmp_path / "bench_copy"
    generated.mkdir()
    (generated / "generator.json").write_text(json.dumps({"preset": "bench", "seed": 4}))
    (generated / "dataset_train.json").write_text("{}")
    with pytest.raises(DataMissingError, match="--preset bench --seed 4") as err:
        check_data(generated)  # dataset_test.json is missing: generate again, with the recorded preset
    (generated / "dataset_test.json").write_text("{}")
    with pytest.raises(DataMissingError) as err:
        check_data(generated)  # only the downloads are missing: no generation (it would overwrite the folder)
    assert "src.synthetic" not in str(err.value) and "src.data.download" in str(err.value)
