"""bench_gpu, bench_augment and bench_train_loop run end to end on the CPU with tiny sizes (the GPU numbers
need a GPU)."""
import json

import numpy as np
import pytest
import torch

from bench import bench_augment, bench_gpu

TINY = ["--device", "cpu", "--backbone", "wrn10_2", "--image-size", "16", "--cache-size", "20", "--heads", "3",
        "--batches", "4", "--steps", "1", "--warmup", "1", "--crops", "16", "--workers", "0", "--loop-steps", "1",
        "--no-compile", "--threads", "1"]


def test_bench_gpu_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = bench_gpu.main(TINY + ["--out-json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["flops"]["gflop_per_image_fwd_bwd"] > 0 and saved["skipped"] == []
    assert [r["channels_last"] for r in saved["model_step"]] == [False, True]
    assert all(r["img_per_s"] > 0 for r in saved["model_step"] + saved["predict"])
    assert saved["heads"][0]["H"] == 3 and saved["heads"][0]["loop_ms"] > 0
    # a full checkpoint holds the AdamW state too: about 3x the weights
    assert 2.5 < saved["checkpoint"]["full"]["gb"] / saved["checkpoint"]["weights_only"]["gb"] < 3.5
    assert {r["path"] for r in saved["loop"]} == {"albumentations DataLoader (today)", "uint8 DataLoader + GPU augment",
                                                  "GPU-resident cache + GPU augment"}
    assert all(r["img_per_s"] > 0 and r["limit"] in ("data", "model") for r in saved["loop"])
    text = (tmp_path / "gpu.md").read_text()
    assert "| fp32 | True | False | 4 |" in text and "Training loop end to end" in text
    assert result["command"].startswith("python -m bench.bench_gpu --device cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_bench_gpu_without_cuda_stops_with_a_message(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_gpu.main([])
    assert stop.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_bench_augment_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_augment, "CASES", ((16, 20),))
    monkeypatch.setattr(bench_augment, "BATCHES", (4,))
    result = bench_augment.main(["--device", "cpu", "--repeats", "1", "--out", str(tmp_path / "aug.json")])
    assert len(result["rows"]) == len(bench_augment.RECIPES)
    for r in result["rows"]:  # the ratio is the two paths' measured throughputs, batched over albumentations
        assert r["batched_crops_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["batched_crops_per_s"] / r["albumentations_crops_per_s"])


def test_bench_train_loop_smoke(tmp_path):
    from bench import bench_train_loop

    result = bench_train_loop.main(["--threads", "1", "--steps", "2", "--chunks", "2", "--batch", "8", "--workers", "0",
                                    "--out", str(tmp_path / "loop.json")])
    (row,) = result["rows"]
    assert row["steps"] == 2
    # both ratios come from the per-path rates the row reports (2 chunks of 1 step each)
    chunks = row["chunk img/s"]
    assert all(len(rates) == 2 for rates in chunks.values())
    assert row["ratio batched / albumentations"] == pytest.approx(
        row["batched img/s"] / row["albumentations per sample img/s"])
    assert row["median chunk ratio"] == pytest.approx(
        np.median(np.array(chunks["batched"]) / np.array(chunks["albumentations per sample"])))
    assert all(np.isfinite(v) for v in row["final losses"].values())
    assert json.loads((tmp_path / "loop.json").read_text())["uptime_before"]
