"""bench.bench_cpu at tiny size, and train.validate_every (validation only every N epochs and after the last)."""
import json
import math
import os

import numpy as np
import pandas as pd
import torch

from bench import bench_cpu
from src.config import Config, load_config
from src.train import train, validation_due

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_cpu_parts_add_up_and_ratios_are_finite(tiny_root, tmp_path):
    out = tmp_path / "results_cpu.json"
    result = bench_cpu.main(["--root", str(tiny_root), "--recipes", "reference", "--views", "roi", "--epochs", "1",
                             "--max-steps", "2", "--step-batches", "1", "--chunks", "1",
                             "--step-variants", "fp32 channels_last", "--options", "default", "validate_every_3",
                             "--side-by-side", "2", "--side-recipes", "reference", "--side-epochs", "1",
                             "--set", "model.backbone=wrn10_1", "data.image_size=16", "train.batch_size=16",
                             "--out", str(out)])
    assert json.loads(out.read_text())["threads"] == 2 and "| recipe |" in out.with_suffix(".md").read_text()
    (b,) = result["breakdown"]
    e = b["per_epoch"]
    timed = sum(e[p] for p in bench_cpu.PARTS if p != "other")
    assert e["step"] > 0 and e["validation"] > 0 and min(e[p] for p in bench_cpu.PARTS if p != "other") >= 0
    assert abs(e["total"] - timed) <= 0.1 * e["total"]  # the hooks account for the epoch's wall time
    assert e["full_epoch"] >= e["total"] - 1e-9 and b["steps_per_epoch"] == min(2, b["full_steps_per_epoch"])
    assert b["member_estimate_s"] > e["total"]
    step = result["step"]
    assert 0 < step["gflop_per_image_fwd_bwd"] < 10 and step["peak_gflop_per_s"] > 0
    for row in step["rows"]:
        assert math.isfinite(row["img_per_s"]) and row["img_per_s"] > 0 and 0 < row["share_of_peak"] < 1
        assert math.isfinite(row["speedup_vs_first"]) and row["speedup_vs_first"] > 0
    rows = {r["option"]: r for r in result["options"]["rows"]}
    assert set(rows) == {"default", "validate_every_3"} and rows["default"]["speedup"] == 1
    for row in rows.values():
        assert math.isfinite(row["speedup"]) and row["speedup"] > 0 and row["epoch_s"] > 0
    (side,) = result["side_by_side"]["rows"]
    assert side["members"] == 2 and side["speedup"] == side["sequential_s"] / side["side_by_side_s"] > 0
    assert [len(v) for v in side["chunk_s"].values()] == [1, 1]
    assert "## Side by side" in out.with_suffix(".md").read_text()


def test_validation_due():
    t = load_config(Config, None, ["train.epochs=7", "train.validate_every=3"]).train
    assert [e for e in range(1, 8) if validation_due(e, t)] == [3, 6, 7]
    assert validation_due(1, t, stop=True)
    assert all(validation_due(e, Config().train) for e in range(1, 11))


def test_validate_every_skips_validation_but_not_training(tiny_root, tmp_path):
    """Rows of unvalidated epochs lack the val columns; the last epoch is validated; the weights and losses are
    the same as with validation every epoch (validation draws no random numbers, epochs reseed)."""
    runs = []
    for every in (1, 2):
        cfg = load_config(Config, os.path.join(REPO, "cfg", "demo_tiny.yaml"),
                          [f"data.root={tiny_root}", f"output.dir={tmp_path}", f"output.run_name=every{every}",
                           "train.epochs=3", f"train.validate_every={every}"])
        runs.append(train(cfg))
    full, sparse = (pd.read_csv(run / "metrics.csv") for run in runs)
    assert full["val_loss"].notna().all()
    assert sparse["val_loss"].isna().tolist() == [True, False, False]
    assert np.allclose(full["train_loss"], sparse["train_loss"], rtol=0, atol=0)
    assert np.isclose(full["val_loss"].iloc[-1], sparse["val_loss"].iloc[-1], rtol=0, atol=0)
    a, b = (torch.load(run / "model.pt", weights_only=True)["model"] for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (runs[1] / "curves.png").is_file() and (runs[1] / "done.json").is_file()


def test_importing_src_makes_openmp_threads_sleep_while_they_wait():
    """OMP_WAIT_POLICY=PASSIVE unless the environment sets it (src/__init__.py), before torch loads OpenMP."""
    import subprocess
    import sys

    code = "import src, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ACTIVE", "False"]
