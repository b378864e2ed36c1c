"""End-to-end training throughput: albumentations per sample in the DataLoader vs augment.batched.

    python -m bench.bench_train_loop [--threads 2] [--steps 300] [--chunks 15] [--workers 0 1] [--device cpu]

The reference small model (cfg/demo_wrn_dwce.yaml with WRN-10-2, 1 head, plain CE: 32 px, batch 64, AdamW)
trains with the project's own loop (src.train.train_one_epoch on loaders from src.data.training) over a
cache of random uint8 crops (the cost of the augmentation and of the model does not depend on the pixels),
once with each augmentation path and each --workers count. The paths take turns in --chunks chunks of
steps / chunks steps (one loader pass each, worker start-up included; order A B, B A, A B, ...; one untimed chunk first), so a change
of machine load falls on both alike. Reported: img/s = images / seconds summed over a path's chunks, the
ratio batched / albumentations of those, and the median of the per-chunk ratios (robust to load that
changes between chunks, as on a shared machine). `uptime` is printed before and after.
"""
from __future__ import annotations

import argparse
import subprocess

import numpy as np
import pandas as pd
import torch

from bench.common import REPO, machine_info
from src.artifacts import atomic_write_json
from src.config import Config, load_config
from src.data.cache import CropCache
from src.data.training import build_datasets, build_loaders
from src.losses import build_training_loss
from src.models import build_model
from src.runtime import Runtime, epoch_seed, reseed_transforms, seed_everything
from src.schedule import build_scheduler
from src.taxonomy import load_taxonomy
from src.train import build_optimizer, train_one_epoch

PATHS = {"albumentations per sample": False, "batched": True}  # name -> augment.batched
MODEL = ["model.backbone=wrn10_2", "model.num_heads=1", "loss.name=ce", "data.val_fraction=0", "data.shifted_val=false",
         "train.progress=false"]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return "uptime: not available"


def random_cache(n: int, size: int, classes: tuple[str, ...], seed: int) -> CropCache:
    """A CropCache of n random uint8 crops (one view) with random labels, in memory."""
    rng = np.random.default_rng(seed)
    index = pd.DataFrame({"annotation_id": np.arange(n), "image_id": np.arange(n),
                          "label": rng.integers(0, len(classes), n), "problem": "", "box_w": size, "box_h": size})
    crops = rng.integers(0, 256, (n, 1, size, size, 3), dtype=np.uint8)
    return CropCache(crops, ("roi",), size, index, REPO / "outputs" / "bench", classes)


class PathRun:
    """One augmentation path and worker count: its config, data, loaders, model and optimiser state."""

    def __init__(self, args, batched: bool, workers: int, train_cache: CropCache, test_cache: CropCache, taxonomy):
        self.cfg = load_config(Config, REPO / "cfg" / "demo_wrn_dwce.yaml",
                               MODEL + [f"augment.batched={str(batched).lower()}", f"data.num_workers={workers}",
                                        f"train.device={args.device}", f"train.batch_size={args.batch}"])
        self.rt = Runtime(0, 1, torch.device(args.device), False)
        self.data = build_datasets(self.cfg, taxonomy, train_cache, test_cache)
        self.loaders = build_loaders(self.cfg, self.data, 0, 1, self.rt.device)
        seed_everything(0)  # the same initial weights for every path
        self.model = build_model(self.cfg, len(taxonomy.names)).to(self.rt.device)
        if self.cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        steps = len(self.loaders.train)
        self.scheduler = build_scheduler(self.optimizer, (args.chunks + 1) * steps, steps // 2, self.cfg.optim.min_lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.loss_fn = build_training_loss(self.cfg.loss, taxonomy).to(self.rt.device)  # CE, no aux heads
        self.images, self.seconds, self.losses, self.chunk_rates = 0, 0.0, [], []

    def chunk(self, chunk: int, timed: bool = True) -> None:
        """One pass over the loader (seeded as training seeds an epoch), timed by train_one_epoch."""
        seed = epoch_seed(self.cfg.seed, chunk)
        seed_everything(seed)
        self.loaders.generator.manual_seed(seed)
        if self.loaders.augment_generator is not None:
            self.loaders.augment_generator.manual_seed(seed + 2**31)
        reseed_transforms(self.data.train, seed)
        loss, seen, seconds = train_one_epoch(self.model, self.loaders.train, self.loss_fn, self.optimizer,
                                              self.scheduler, self.scaler, None, self.rt, None, "", False,
                                              self.loaders.augment)
        if not timed:
            return
        self.images, self.seconds = self.images + seen, self.seconds + seconds
        self.losses.append(loss)
        self.chunk_rates.append(seen / seconds)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_train_loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per path and worker count")
    parser.add_argument("--chunks", type=int, default=15, help="the paths take turns in this many chunks")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader worker counts to measure")
    parser.add_argument("--device", default="cpu", help="training device (the batched path runs there)")
    parser.add_argument("--out", default="outputs/bench/bench_train_loop.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    taxonomy = load_taxonomy()
    size = load_config(Config, REPO / "cfg" / "demo_wrn_dwce.yaml", MODEL).data.image_size
    steps_per_chunk = max(1, args.steps // args.chunks)
    train_cache = random_cache(args.batch * steps_per_chunk, size, taxonomy.names, seed=0)
    test_cache = random_cache(1, size, taxonomy.names, seed=1)
    info = machine_info()
    before = uptime()
    print(f"machine: {info['cpu']}, {info['cores']} cores; torch threads {args.threads}; {before}", flush=True)
    print(f"WRN-10-2, 1 head, CE, {size} px, batch {args.batch}, {args.chunks} x {steps_per_chunk} steps per path, "
          f"device {args.device}", flush=True)
    rows = []
    for workers in args.workers:
        runs = {name: PathRun(args, batched, workers, train_cache, test_cache, taxonomy)
                for name, batched in PATHS.items()}
        for run in runs.values():
            run.chunk(-1, timed=False)  # warm-up: first calls, allocations
        for chunk in range(args.chunks):
            for run in list(runs.values())[::1 if chunk % 2 == 0 else -1]:
                run.chunk(chunk)
        rates = {name: run.images / run.seconds for name, run in runs.items()}
        alb, bat = runs["albumentations per sample"].chunk_rates, runs["batched"].chunk_rates
        row = {"workers": workers, "steps": args.chunks * steps_per_chunk,
               **{f"{name} img/s": rate for name, rate in rates.items()},
               "ratio batched / albumentations": rates["batched"] / rates["albumentations per sample"],
               "median chunk ratio": float(np.median(np.array(bat) / np.array(alb))),
               "final losses": {name: run.losses[-1] for name, run in runs.items()},
               "chunk img/s": {name: run.chunk_rates for name, run in runs.items()}}
        rows.append(row)
        print(f"workers {workers}: albumentations per sample {rates['albumentations per sample']:.0f} img/s, "
              f"batched {rates['batched']:.0f} img/s, ratio {row['ratio batched / albumentations']:.2f}x, median chunk "
              f"ratio {row['median chunk ratio']:.2f}x; per chunk: "
              + "; ".join(f"{name} " + " ".join(f"{r:.0f}" for r in run.chunk_rates) for name, run in runs.items()),
              flush=True)
    after = uptime()
    print(after)
    result = {"machine": info, "threads": args.threads, "device": args.device, "batch": args.batch,
              "image_size": size, "uptime_before": before, "uptime_after": after, "rows": rows}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
