"""Data-path speed: ROI extraction, cache build, and cache read + augmentation vs PNG decode + torchvision.

    python -m bench.bench_data                       # generates simple frames + COCO in a temp folder
    python -m bench.bench_data --root inputs/synthetic --split train   # or an existing dataset folder

Every row is measured in the same run on the same crops. With --root, ROOT/dataset_<split>.json and
ROOT/<split>/images/ must exist; ROIs and caches are written to a temporary folder, nothing under ROOT.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.common import timed
from src.data.cache import load_or_build_crop_cache
from src.data.coco import load_coco
from src.data.dataset import CropCacheDataset, PngRoiDataset
from src.data.download import crop_all
from src.data.transforms import build_eval_transform, build_torchvision_train_transform, build_train_transform


def write_simple_dataset(root: Path, n_frames: int, boxes_per_frame: int, width: int, height: int,
                         seed: int = 0) -> tuple[Path, Path]:
    """Frames (smooth background, noise, a few blobs) as PNGs and a COCO file with their boxes."""
    rng = np.random.default_rng(seed)
    images_dir = root / "train" / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images, annotations = [], []
    for i in range(1, n_frames + 1):
        base = 40 + 30 * np.sin(xx / rng.uniform(80, 200)) + 20 * np.cos(yy / rng.uniform(60, 150))
        frame = np.stack([base * 0.6, base * 0.9, base * 1.2], axis=2) + rng.normal(0, 4, (height, width, 3))
        for j in range(boxes_per_frame):
            w, h = (int(v) for v in rng.lognormal(np.log(90), 0.6, 2).clip(8, min(width, height) - 1))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            colour = rng.uniform(60, 255, 3)
            cv2.ellipse(frame, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, colour.tolist(), -1)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "bbox": [x, y, w, h],
                                "category_id": int(rng.integers(1, 80))})
        Image.fromarray(frame.clip(0, 255).astype(np.uint8)).save(images_dir / f"frame_{i}.png")
        images.append({"id": i, "file_name": f"frame_{i}.png", "width": width, "height": height,
                       "coco_url": (images_dir / f"frame_{i}.png").as_uri()})
    coco_json = root / "dataset_train.json"
    categories = [{"id": k, "name": f"c{k}"} for k in range(1, 80)]
    coco_json.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return coco_json, images_dir


def rate(fn, n_items: int) -> tuple[float, float]:
    """(items per second, seconds) of one call of fn()."""
    _, seconds = timed(fn)
    return n_items / seconds, seconds


def consume(dataset, n: int, workers: int = 0, batch_size: int = 64) -> None:
    if workers == 0:
        for i in range(n):
            dataset[i % len(dataset)]
        return
    subset = torch.utils.data.Subset(dataset, [i % len(dataset) for i in range(n)])
    for _ in DataLoader(subset, batch_size=batch_size, num_workers=workers, shuffle=False):
        pass


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="dataset folder (default: generate one in a temp folder)")
    parser.add_argument("--split", default="train", help="split to use with --root (default train)")
    parser.add_argument("--frames", type=int, default=120, help="generated frames (default 120)")
    parser.add_argument("--boxes", type=int, default=4, help="generated boxes per frame (default 4)")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(1280, 720), metavar=("W", "H"))
    parser.add_argument("--size", type=int, default=112, help="crop size in the cache and transforms")
    parser.add_argument("--items", type=int, default=2000, help="items read per dataset measurement")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # per-sample CPU work: keep the comparison about the data path itself

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.root:
            coco_json = args.root / f"dataset_{args.split}.json"
            images_dir = args.root / args.split / "images"
        else:
            print(f"generating {args.frames} frames of {args.frame_size[0]}x{args.frame_size[1]} "
                  f"with {args.boxes} boxes each ...")
            coco_json, images_dir = write_simple_dataset(tmp, args.frames, args.boxes, *args.frame_size)
        cache_dir = tmp / "cache"  # always a fresh build
        coco = load_coco(coco_json)
        n = len(coco.annotations)
        split_dir, ctx_dir = tmp / "split", tmp / "split_ctx"
        for folder in (split_dir, ctx_dir):  # crops go to temp folders that see the frames as images/
            folder.mkdir()
            (folder / "images").symlink_to(images_dir.resolve(), target_is_directory=True)
        rows = []

        speed, secs = rate(lambda: crop_all(coco, split_dir, progress=False), n)
        rows.append(("ROI extraction to PNG files (threads)", speed, secs))
        speed, secs = rate(lambda: crop_all(coco, ctx_dir, progress=False, context=(3.0, 5.0),
                                            full_frame=True), n)
        rows.append(("ROI + ctx3 + ctx5 + frame PNGs, first run (threads)", speed, secs))

        views = ("roi", "ctx3", "ctx5", "frame")
        speed, secs = rate(lambda: load_or_build_crop_cache(coco_json, images_dir, cache_dir / "bench", args.size,
                                                            views=("roi",), progress=False), n)
        rows.append((f"cache build, roi, {args.size}px", speed, secs))
        speed, secs = rate(lambda: load_or_build_crop_cache(coco_json, images_dir, cache_dir / "bench", args.size,
                                                            views=views, progress=False), n)
        rows.append((f"cache build, 4 views, {args.size}px", speed, secs))
        cache = load_or_build_crop_cache(coco_json, images_dir, cache_dir / "bench", args.size, views=("roi",),
                                         progress=False)
        table = crop_all(coco, split_dir, progress=False)  # resume: nothing to cut, returns the table
        table = table[table["problem"] == ""]

        train_tf = build_train_transform(args.size, downscale=(0.25, 1.0))
        cached_train = CropCacheDataset(cache.crops, cache.labels, train_tf)
        cached_eval = CropCacheDataset(cache.crops, cache.labels, build_eval_transform(args.size))
        png_train = PngRoiDataset(table["path"], np.zeros(len(table)), build_torchvision_train_transform(args.size),
                                  root=split_dir)
        png_decode = PngRoiDataset(table["path"], np.zeros(len(table)), lambda im: np.asarray(im), root=split_dir)
        raw_cache = CropCacheDataset(cache.crops, cache.labels, lambda a: torch.from_numpy(np.ascontiguousarray(a)))
        m = args.items
        reads = [
            ("PNG decode only (PIL), 1 process", png_decode, 0),
            ("cache read only (memmap), 1 process", raw_cache, 0),
            ("PNG decode + torchvision train transforms, 1 process", png_train, 0),
            ("cache read + albumentations train transform, 1 process", cached_train, 0),
            ("cache read + eval transform, 1 process", cached_eval, 0),
            (f"PNG + torchvision, DataLoader {args.workers} workers", png_train, args.workers),
            (f"cache + albumentations, DataLoader {args.workers} workers", cached_train, args.workers),
        ]
        for name, dataset, workers in reads:
            consume(dataset, min(m, 64), workers)  # warm the page cache and the imports
            speed, secs = rate(lambda: consume(dataset, m, workers), m)
            rows.append((name, speed, secs))

    print(f"\n{n} ROIs from {len(coco.images)} frames; crop size {args.size}; torch threads 1\n")
    print(f"{'measurement':58s} {'crops/s':>9s} {'seconds':>8s}")
    for name, speed, secs in rows:
        print(f"{name:58s} {speed:9.0f} {secs:8.2f}")
    by_name = {name: speed for name, speed, _ in rows}
    png = by_name["PNG decode + torchvision train transforms, 1 process"]
    cached = by_name["cache read + albumentations train transform, 1 process"]
    png_dl = by_name[f"PNG + torchvision, DataLoader {args.workers} workers"]
    cached_dl = by_name[f"cache + albumentations, DataLoader {args.workers} workers"]
    raw = by_name["cache read only (memmap), 1 process"] / by_name["PNG decode only (PIL), 1 process"]
    print(f"\nratio cache+aug / PNG+torchvision: {cached / png:.2f}x (1 process), {cached_dl / png_dl:.2f}x "
          f"({args.workers} workers); raw read {raw:.1f}x")
    return {"rois": n, "frames": len(coco.images), "size": args.size, "workers": args.workers,
            "crops_per_s": by_name, "ratio_1_process": cached / png, "ratio_workers": cached_dl / png_dl,
            "ratio_raw_read": raw, "png_1_process": png, "cache_1_process": cached, "png_workers": png_dl,
            "cache_workers": cached_dl}


if __name__ == "__main__":
    main()
