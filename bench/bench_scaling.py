"""Scaling: training throughput of the demo model at 0, 1 and 2 DataLoader workers, and how the demo
pipeline's wall time grows with the generated benchmark's size (tiny, demo, bench presets).

    python -m bench.bench_scaling [--root inputs/synthetic/demo] [--batches 30] [--presets tiny demo]
                                  [--bench-root inputs/synthetic/bench]

(a) Workers: the demo training recipe (cfg/demo_wrn_dwce.yaml: WRN-16-2, 32 px, 4 heads, DW-CE, AdamW,
    its train augmentation on the crop cache of --root), `--batches` batches of 64 per setting after two
    warm-up batches, data loading included; img/s per worker count, 1 worker is the reference.
(b) Presets: per preset, generated into a temporary folder: generate, download (frames + ROI crops), crop
    cache build, then ONE epoch of one pipeline member (cfg/pipeline_demo.yaml's recipe) including its
    validation and test prediction. The pipeline's wall time is then EXTRAPOLATED (not measured) as
    prepare + members x (rounds + 1) x (epochs x epoch time + per-run overhead). With --bench-root an
    existing bench folder is reused: its generate/download time is extrapolated from demo by the ROI count.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from bench.common import timed
from src.config import Config, deep_merge, load_config, parse_overrides, validate_config
from src.run_files import METRICS_FILE
from src.stages.members import build_member_config
from src.stages.pipeline_config import load_pipeline_config

DEMO_RECIPE = "cfg/demo_wrn_dwce.yaml"
PIPELINE = "cfg/pipeline_demo.yaml"


def worker_scaling(root: str, batches: int, workers=(0, 1, 2), threads: int = 2) -> dict:
    """Training img/s of the demo recipe per DataLoader worker count (same model, data and batches)."""
    from src.data.training import build_datasets, load_split
    from src.losses import build_loss
    from src.models import build_model
    from src.taxonomy import load_taxonomy
    from src.train import build_optimizer

    cfg = load_config(Config, DEMO_RECIPE, [f"data.root={root}", "data.val_fraction=0", "data.shifted_val=false"])
    torch.set_num_threads(threads)
    taxonomy = load_taxonomy()
    data = build_datasets(cfg, taxonomy, load_split(cfg, taxonomy, "train", False), load_split(cfg, taxonomy, "test", False))
    model = build_model(cfg, len(taxonomy)).to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, taxonomy)
    optimizer = build_optimizer(model, cfg.optim)
    out = {"recipe": DEMO_RECIPE, "root": root, "batch": cfg.train.batch_size, "batches": batches,
           "threads": threads, "img_per_s": {}}
    for w in workers:
        loader = DataLoader(data.train, cfg.train.batch_size, shuffle=True, num_workers=w, drop_last=True,
                            generator=torch.Generator().manual_seed(0))

        def epoch_part():
            seen = 0
            for i, (x, y) in enumerate(loader):
                if i == 2:  # two warm-up batches (worker start-up, allocator) before the clock starts
                    start = time.perf_counter()
                    seen = 0
                if i == batches + 2:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x)["logits"], y).backward()  # the loss averages over the heads itself
                optimizer.step()
                seen += len(y)
            return seen / (time.perf_counter() - start)

        rate, _ = timed(epoch_part)
        out["img_per_s"][w] = rate
        print(f"  demo model training, {w} DataLoader workers: {rate:.0f} img/s", flush=True)
    return out


def _pipeline_member(root: Path, out: Path, epochs: int = 1, extra: tuple[str, ...] = ()):
    """The first member's training Config of cfg/pipeline_demo.yaml on `root`, cut to `epochs`."""
    pipe = load_pipeline_config(PIPELINE, [f"data_root={root}", f"solution={root / 'solution.csv'}",
                                           f"output_root={out}"])
    cfg = build_member_config(pipe, 0, pipe.seeds[0])
    tree = deep_merge(cfg.model_dump(mode="json"), parse_overrides([f"train.epochs={epochs}", "train.progress=false", *extra]))
    return pipe, validate_config(Config, tree, source="pipeline member")


def preset_scaling(presets: list[str], bench_root: str | None, workdir: Path) -> dict:
    """Per preset: measured prepare and one-epoch times, and the extrapolated pipeline wall time."""
    from src.data.cache import load_or_build_crop_cache
    from src.data.download import download_split
    from src.synthetic.generator import generate_benchmark
    from src.train import train

    rows = []
    for preset in presets:
        reuse = preset == "bench" and bench_root
        root = Path(bench_root) if reuse else workdir / preset
        row = {"preset": preset, "root": str(root)}
        if not reuse:
            _, row["generate_s"] = timed(lambda: generate_benchmark(root, preset, seed=0, progress=False))
            _, row["download_s"] = timed(lambda: [download_split(root / f"dataset_{s}.json", root / s, progress=False)
                                                  for s in ("train", "test")])
        # tiny has 3 ROIs per class: the frame-grouped split needs val_fraction >= 1/3 (as cfg/demo_tiny.yaml)
        extra = ("data.val_fraction=0.34",) if preset == "tiny" else ()
        pipe, cfg = _pipeline_member(root, workdir / f"runs_{preset}", extra=extra)
        row["train_rois"] = len(pd.read_csv(root / "train" / "annotations.csv"))
        # A fresh, timed cache build per preset: where training finds it for a generated root; in a temporary
        # folder for a reused root (never written under it; its own cache is then already there for training).
        cache_dir = workdir / f"cache_{preset}" if reuse else root / "cache"
        _, row["cache_s"] = timed(lambda: [load_or_build_crop_cache(
            root / f"dataset_{s}.json", root / s / "images", cache_dir, cfg.data.image_size,
            views=tuple(cfg.data.views), progress=False) for s in ("train", "test")])
        _, row["one_run_1_epoch_s"] = timed(lambda: train(cfg))
        metrics = pd.read_csv(Path(cfg.output.dir) / cfg.output.run_name / METRICS_FILE)
        row["epoch_s"] = float(metrics["epoch_seconds"].iloc[0])
        row["run_overhead_s"] = row["one_run_1_epoch_s"] - row["epoch_s"]
        epochs = pipe.train_overrides.get("train", {}).get("epochs") or cfg.train.epochs
        row.update(members=len(pipe.seeds), rounds=pipe.rounds, epochs=epochs)
        rows.append(row)
        print(f"  preset {preset}: {row}", flush=True)
    by = {r["preset"]: r for r in rows}
    for row in rows:
        if "generate_s" not in row and "demo" in by and "generate_s" in by["demo"]:
            scale = row["train_rois"] / by["demo"]["train_rois"]
            row["generate_s"] = by["demo"]["generate_s"] * scale
            row["download_s"] = by["demo"]["download_s"] * scale
            row["prepare_extrapolated"] = f"generate + download scaled x{scale:.1f} from demo by ROI count"
        prepare = row.get("generate_s", float("nan")) + row.get("download_s", float("nan")) + row["cache_s"]
        per_run = row["epochs"] * row["epoch_s"] + row["run_overhead_s"]
        row["pipeline_extrapolated_s"] = prepare + row["members"] * (row["rounds"] + 1) * per_run
    return {"pipeline": PIPELINE, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="inputs/synthetic/demo", help="dataset with crops for the worker test")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per worker setting")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--presets", nargs="*", default=["tiny", "demo"], choices=["tiny", "demo", "bench"])
    parser.add_argument("--bench-root", help="reuse this generated bench folder (its prepare is extrapolated)")
    args = parser.parse_args(argv)
    results = {"workers": worker_scaling(args.root, args.batches, threads=args.threads)}
    if args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            results["presets"] = preset_scaling(args.presets, args.bench_root, Path(tmp))
    return results


if __name__ == "__main__":
    main()
