"""Training-side speed measurements.

(a) DW-CE forward+backward vs plain CE (B=256, C=79)
(b) H=100 heads Linear(F,F)-ReLU-Linear(F,79) forward+backward: one batched op vs a Python loop,
    for the real feature width F=2048 and a small one
(c) training throughput (img/s) of the demo model (WRN-16-2, 32 px, 4 heads, DW-CE, AdamW) on this machine
(d) on CUDA only: wide_resnet101_2 at 112 px, batch 64, bf16 + channels_last, 100 heads, DW-CE (img/s, and
    the implied epoch time on 23.7k crops)

    python -m bench.bench_train [--threads 2] [--skip-large-heads] [--out outputs/bench/bench_train.json]
"""
from __future__ import annotations

import argparse
import gc
import os
import platform

import torch

from bench.common import timed
from src.artifacts import atomic_write_json
from src.config import Config
from src.losses import CrossEntropy, DistanceWeightedCE
from src.models import LoopHeads, MultiHead, build_model
from src.taxonomy import distance_matrix, dwce_weights_team, load_taxonomy


def median_seconds(fn, repeats: int, warmup: int = 2, sync=None) -> float:
    """Median seconds of fn() over `repeats` calls after `warmup` calls."""
    return timed(fn, repeats, warmup=warmup, sync=sync, stat="median")[1]


def bench_losses(device: torch.device, repeats: int) -> dict:
    D = distance_matrix(load_taxonomy())
    dwce, ce = DistanceWeightedCE(dwce_weights_team(D)).to(device), CrossEntropy().to(device)
    logits = torch.randn(256, 79, device=device, requires_grad=True)
    targets = torch.randint(0, 79, (256,), device=device)

    def step(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(logits, targets), logits)

    t_dwce, t_ce = median_seconds(step(dwce), repeats), median_seconds(step(ce), repeats)
    return {"dwce_ms": 1e3 * t_dwce, "ce_ms": 1e3 * t_ce, "dwce_over_ce": t_dwce / t_ce}


def bench_heads(features: int, heads: int, batch: int, repeats: int, device: torch.device,
                autocast_dtype: torch.dtype | None = None) -> dict:
    """Forward+backward ms of H heads, batched (MultiHead) vs a loop (LoopHeads), optionally under autocast."""
    x = torch.randn(batch, features, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    out = {}
    for name, cls in (("batched", MultiHead), ("loop", LoopHeads)):
        def step(module=cls(features, 79, heads).to(device)):
            module.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = module(x)
            logits.float().sum().backward()

        out[f"{name}_ms"] = 1e3 * median_seconds(step, repeats, warmup=1, sync=sync)
        del step  # free this variant's weights (3.5 GB at F=2048) before building the next
        gc.collect()
    out["loop_over_batched"] = out["loop_ms"] / out["batched_ms"]
    return {"F": features, "H": heads, "B": batch, **out}


def bench_demo_model(repeats: int) -> dict:
    cfg = Config.model_validate({"data": {"image_size": 32}, "model": {"backbone": "wrn16_2", "num_heads": 4,
                                                                       "head_hidden": 64}})
    model = build_model(cfg, 79).to(memory_format=torch.channels_last)
    loss_fn = DistanceWeightedCE(dwce_weights_team(distance_matrix(load_taxonomy())))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 1, 3, 32, 32), torch.randint(0, 79, (64,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x)["logits"], y).backward()
        opt.step()

    seconds = median_seconds(step, repeats)
    return {"model": "wrn16_2 32px 4 heads", "batch": 64, "img_per_s": 64 / seconds}


def bench_gpu_wrn101(repeats: int) -> dict:
    device = torch.device("cuda")
    cfg = Config.model_validate({"data": {"image_size": 112},
                                 "model": {"backbone": "wide_resnet101_2", "num_heads": 100}})
    model = build_model(cfg, 79).to(device).to(memory_format=torch.channels_last)
    loss_fn = DistanceWeightedCE(dwce_weights_team(distance_matrix(load_taxonomy()))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    x = torch.randn(64, 1, 3, 112, 112, device=device)
    y = torch.randint(0, 79, (64,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        loss_fn(out["logits"], y).backward()
        opt.step()

    seconds = median_seconds(step, repeats, warmup=5, sync=torch.cuda.synchronize)
    return {"model": "wide_resnet101_2 112px bf16 channels_last 100 heads", "batch": 64,
            "img_per_s": 64 / seconds, "epoch_seconds_23699": 23699 / (64 / seconds),
            "gpu": torch.cuda.get_device_name()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions of the cheap measurements")
    parser.add_argument("--skip-large-heads", action="store_true", help="skip the F=2048 heads (3.5 GB, slow on CPU)")
    parser.add_argument("--out", default="outputs/bench/bench_train.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
               "threads": args.threads, "torch": torch.__version__,
               "load_average_at_start": os.getloadavg()[0]}  # other processes on the machine skew CPU numbers

    results["loss"] = bench_losses(device, 10 * args.repeats)
    print(f"(a) B=256 C=79 fwd+bwd: DW-CE {results['loss']['dwce_ms']:.3f} ms, CE {results['loss']['ce_ms']:.3f} ms, "
          f"ratio {results['loss']['dwce_over_ce']:.2f}", flush=True)
    sizes = [(128, args.repeats)] + ([] if args.skip_large_heads else [(2048, 3)])
    results["heads"] = []
    for features, repeats in sizes:
        r = bench_heads(features, 100, 64, repeats, device)
        results["heads"].append(r)
        print(f"(b) H=100 F={features} B=64 fwd+bwd: batched {r['batched_ms']:.1f} ms, loop {r['loop_ms']:.1f} ms, "
              f"loop/batched {r['loop_over_batched']:.2f}", flush=True)
    results["demo_model"] = bench_demo_model(args.repeats)
    print(f"(c) {results['demo_model']['model']} batch 64 train step: {results['demo_model']['img_per_s']:.0f} img/s "
          f"({args.threads} threads)", flush=True)
    if device.type == "cuda":
        results["gpu_wrn101"] = bench_gpu_wrn101(args.repeats)
        g = results["gpu_wrn101"]
        print(f"(d) {g['model']}: {g['img_per_s']:.0f} img/s, epoch of 23,699 crops {g['epoch_seconds_23699']:.1f} s")
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
