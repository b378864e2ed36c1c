"""Train augmentation throughput: the batched path (src/data/gpu_augment.py) vs albumentations per sample.

    python -m bench.bench_augment [--device cpu|cuda] [--threads 1] [--repeats 3] [--out outputs/bench/bench_augment.json]

Both paths turn uint8 cached crops into a normalised float batch with the same config (the team's recipe,
and the recipe plus random down-scaling): albumentations one crop at a time in this process (what one
DataLoader worker does, collation included), the batched path on --device (default cuda when present; the
uint8 batch starts in pinned host memory and its copy to the device is timed). Sizes: 32 px from 32 px crops
(the CPU demo) and 112 px from 128 px crops (the real recipe); batches 64 and 256. Every row prints the
ratio batched / albumentations measured in the same run.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.common import machine_info, timed
from src.artifacts import atomic_write_json
from src.data.gpu_augment import BatchAugment
from src.data.transforms import build_train_transform

CASES = ((32, 32), (112, 128))  # (output size, cached crop size)
BATCHES = (64, 256)
RECIPES = {"recipe": dict(rrc_scale=(0.1, 1.0), hflip=True, color_jitter=0.4, pca_lighting=0.1, downscale=None),
           "recipe + downscale": dict(rrc_scale=(0.1, 1.0), hflip=True, color_jitter=0.4, pca_lighting=0.1,
                                      downscale=(0.25, 1.0), downscale_p=0.5)}


def measure(device: torch.device, repeats: int, pool: int = 512) -> list[dict]:
    """One row per (recipe, size, batch): crops/s of both paths and their ratio."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rng = np.random.default_rng(0)
    rows = []
    for size, cache in CASES:
        crops = rng.integers(0, 256, (pool, cache, cache, 3), dtype=np.uint8)
        for recipe, kw in RECIPES.items():
            per_sample = build_train_transform(size, **kw)
            batched = BatchAugment(size, device=device, **kw)
            generator = torch.Generator().manual_seed(0)
            for batch in BATCHES:
                host = torch.from_numpy(crops[:batch])
                host = host.pin_memory() if device.type == "cuda" else host

                def albumentations_batch():
                    return torch.stack([per_sample(crops[i]) for i in range(batch)])

                def batched_batch():
                    return batched(host, generator)

                _, t_alb = timed(albumentations_batch, repeats, warmup=1)
                _, t_bat = timed(batched_batch, max(repeats, 5), warmup=2, sync=sync)
                row = {"recipe": recipe, "size": size, "crop_size": cache, "batch": batch,
                       "albumentations_crops_per_s": batch / t_alb, "batched_crops_per_s": batch / t_bat,
                       "ratio": t_alb / t_bat}
                rows.append(row)
                print(f"{recipe:19s} {size:4d} px (from {cache}) batch {batch:4d}: albumentations "
                      f"{row['albumentations_crops_per_s']:8.0f} crops/s, batched ({device.type}) "
                      f"{row['batched_crops_per_s']:9.0f} crops/s, ratio {row['ratio']:6.2f}x", flush=True)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_augment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="device of the batched path (default cuda if present)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: per core)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is kept)")
    parser.add_argument("--out", default="outputs/bench/bench_augment.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_average']}; GPU {info.get('gpu')}; "
          f"torch threads {args.threads}; batched path on {device}")
    rows = measure(device, args.repeats)
    result = {"machine": info, "device": str(device), "threads": args.threads, "rows": rows,
              "load_average_end": machine_info()["load_average"]}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
