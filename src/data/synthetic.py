"""Generate a FathomNet-like benchmark in the real COCO format: the embedded default data set.

Real FathomNet images cannot be fetched offline, so tests, CI and the README's first command use this.
It writes, under ROOT:
  frames/train/*.png, frames/test/*.png   underwater-looking frames with several animals each
  dataset_train.json, dataset_test.json   COCO files like the competition's (test category_id null,
                                          coco_url = file:// URL of the frame)
  solution.csv                            annotation_id,concept_name for every test annotation
  generator.json                          the generator's parameters (written last: complete)
The 79 concepts, their ids and taxonomy are the real ones; appearance follows the taxonomy (see
src/data/synthetic_shapes.py). The test split is shifted like the real one: objects smaller (by a
factor 1 - shift/2), more blur, turbidity and noise, a warmer lamp with a stronger vignette.

    python -m src.data.synthetic --out inputs/synthetic --preset demo --seed 0 --preview preview.png
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from src.artifacts import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from src.data.synthetic_shapes import (PELAGIC_PLANS, UPRIGHT_PLANS, Genes, concept_genes, draw_sprite,
                                       instance_genes)
from src.taxonomy import Taxonomy, distance_matrix, load_taxonomy


@dataclass(frozen=True)
class Preset:
    train_per_class: int
    test_per_class: int


PRESETS = {
    "tiny": Preset(train_per_class=3, test_per_class=1),
    "demo": Preset(train_per_class=20, test_per_class=5),
    "bench": Preset(train_per_class=100, test_per_class=10),  # 790 test ROIs, like the real 788
}
DEFAULT_SHIFT = 1.0  # test objects half the train size, about the real ratio
TRAIN_FRAME = (320, 240)  # (width, height)
TEST_FRAMES = ((384, 216), (360, 243), (320, 240))  # like 1920x1080 and 720x486 frames, scaled
TEST_FRAME_P = (0.65, 0.25, 0.10)
OBJECT_SIZE = (24.0, 96.0)  # longest extent of a train object, log-uniform (px)
MAX_OBJECTS = 6
MEAN_OBJECTS = {"train": 2.6, "test": 2.4}  # real: 23,699 / 8,980 and 788 / 325
SPLIT_CODE = {"train": 0, "test": 1}
GENERATOR_VERSION = 1
# Noisy frames barely compress with LZ77: Huffman-only coding is as fast as level 1 and 20% smaller.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]


@dataclass(frozen=True)
class FrameStyle:
    """Imaging conditions of a split; `shift` in 0..1 moves the test split away from the train one."""

    size_scale: float
    blur: tuple[float, float]  # Gaussian sigma range (px)
    noise: tuple[float, float]  # sensor noise sigma range (0..255)
    turbidity: tuple[float, float]  # blend towards the water colour
    lamp_bgr: tuple[float, float, float]
    vignette: tuple[float, float]
    brightness: tuple[float, float]
    snow: tuple[int, int]  # marine-snow particles per frame


def split_style(split: str, shift: float) -> FrameStyle:
    """Train style, or the test style at shift strength `shift` (0: same conditions as train)."""
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be in 0..1, got {shift}")
    s = shift if split == "test" else 0.0
    return FrameStyle(
        size_scale=1.0 - s / 2,
        blur=(0.4 + 0.1 * s, 0.9 + 0.25 * s),
        noise=(1.0 + 0.5 * s, 3.0 + 1.5 * s),
        turbidity=(0.05 + 0.06 * s, 0.2 + 0.1 * s),
        lamp_bgr=(1.0 - 0.15 * s, 1.0 - 0.03 * s, 1.0 + 0.15 * s),
        vignette=(0.15 + 0.15 * s, 0.45 + 0.2 * s),
        brightness=(0.9 - 0.12 * s, 1.15 - 0.12 * s),
        snow=(5 + int(15 * s), 40 + int(60 * s)),
    )


# ---------------------------------------------------------------- which animals go in which frame

def assign_frames(counts: np.ndarray, D: np.ndarray, rng: np.random.Generator, mean_objects: float,
                  max_objects: int = MAX_OBJECTS) -> list[np.ndarray]:
    """Group exactly counts[c] objects of every class c into frames of 1..max_objects objects.

    Like real frames, companions of a frame's first object are often the same class (45%) or a
    near taxon (30%, weighted by exp(-distance)), else any class. Returns class indices per frame."""
    remaining = np.asarray(counts, dtype=np.int64).copy()
    near = np.exp(-D.astype(np.float64) / 1.5)
    np.fill_diagonal(near, 0.0)
    frames = []
    while remaining.sum() > 0:
        k = int(min(1 + rng.poisson(mean_objects - 1), max_objects))
        primary = int(rng.choice(len(remaining), p=remaining / remaining.sum()))
        labels = [primary]
        remaining[primary] -= 1
        while len(labels) < k and remaining.sum() > 0:
            r = rng.random()
            weights = np.eye(len(remaining))[primary] if r < 0.45 else near[primary] if r < 0.75 else 1.0
            w = weights * remaining
            if w.sum() == 0:
                w = remaining.astype(np.float64)
            pick = int(rng.choice(len(remaining), p=w / w.sum()))
            labels.append(pick)
            remaining[pick] -= 1
        frames.append(np.array(labels, dtype=np.int64))
    return frames


# ---------------------------------------------------------------- rendering

def water_colour(depth: float) -> np.ndarray:
    """BGR water colour: blue-green and brighter when shallow, dark navy when deep."""
    shallow, deep = np.array([150.0, 125.0, 45.0]), np.array([70.0, 38.0, 12.0])
    return shallow + (deep - shallow) * depth


def _smooth_noise(h: int, w: int, cells: int, rng) -> np.ndarray:
    small = rng.random((max(2, cells * h // w), cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def render_background(width: int, height: int, seafloor: bool, depth: float, rng) -> tuple[np.ndarray, float]:
    """(frame float32 HxWx3 BGR, horizon y): open water, or seafloor below a horizon."""
    water = water_colour(depth) * rng.uniform(0.85, 1.15, 3)
    rows = np.linspace(1.25, 0.75, height, dtype=np.float32)[:, None, None]
    frame = (water * rows).astype(np.float32) * (0.9 + 0.2 * _smooth_noise(height, width, 4, rng))[..., None]
    horizon = -1.0
    if seafloor:
        horizon = height * rng.uniform(0.05, 0.45)
        top = int(np.ceil(horizon))
        sediment = np.array([95.0, 115.0, 130.0]) * rng.uniform(0.7, 1.2) * rng.uniform(0.85, 1.15, 3)
        sediment = sediment.astype(np.float32)
        rows_below = height - top
        texture = (0.75 + 0.35 * _smooth_noise(rows_below, width, 12, rng)
                   + 0.15 * rng.random((rows_below, width), np.float32))
        # Distance fog: the far seafloor fades into the water.
        y = np.arange(top, height, dtype=np.float32)
        fog = (0.25 + 0.75 * np.clip((y - horizon) / (height - horizon), 0, 1) ** 0.7)[:, None, None]
        frame[top:] = (sediment * texture[..., None]) * fog + water.astype(np.float32) * (1 - fog)
        for _ in range(rng.integers(2, 9)):  # pebbles
            cy = rng.uniform(horizon, height)
            scale = 0.4 + 0.6 * (cy - horizon) / (height - horizon)
            axes = (int(rng.uniform(2, 9) * scale) + 1, int(rng.uniform(1, 5) * scale) + 1)
            colour = tuple(float(v) for v in sediment * rng.uniform(0.4, 0.8) * (0.25 + 0.75 * scale))
            cv2.ellipse(frame, (int(rng.uniform(0, width)), int(cy)), axes, 0, 0, 360, colour, -1, cv2.LINE_AA)
    return frame, horizon


def _paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Alpha-blend a sprite into the frame with its top-left corner at (x0, y0), clipping at borders."""
    h, w = alpha.shape
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + w, frame.shape[1]), min(y0 + h, frame.shape[0])
    if fx1 <= fx0 or fy1 <= fy0:
        return
    a = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0, None]
    region = frame[fy0:fy1, fx0:fx1]
    region *= 1 - a
    region += rgb[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] * a


def _iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def render_frame(labels: np.ndarray, genes: list[Genes], width: int, height: int, style: FrameStyle,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[list[float]]]:
    """Draw one frame with the given classes. Returns (BGR uint8 image, bbox [x, y, w, h] per label).

    Boxes are tight around each drawn animal (its full extent, also where something occludes it),
    clipped to the frame. The frame's habitat and water depth follow its first animal (weak cue)."""
    first = genes[labels[0]]
    seafloor = bool(rng.random() < first.floor_prob)
    depth = float(np.clip(first.depth + rng.normal(0, 0.2), 0, 1))
    frame, horizon = render_background(width, height, seafloor, depth, rng)

    placed = []  # (y for z-order, sprite rgb, alpha, x0, y0, box)
    for label in labels:
        g = instance_genes(genes, label, rng)
        size = float(np.exp(rng.uniform(*np.log(OBJECT_SIZE)))) * style.size_scale
        on_floor = seafloor and g.plan not in PELAGIC_PLANS
        angle = rng.normal(0, 15) if (on_floor and g.plan in UPRIGHT_PLANS) else rng.uniform(0, 360)
        rgb, alpha = draw_sprite(g, size, angle, rng, flip=bool(rng.random() < 0.5))
        ys, xs = np.nonzero(alpha > 0.2)
        if len(xs) == 0:
            ys, xs = np.nonzero(alpha > 0)
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1  # tight box in the sprite
        bw, bh = bx1 - bx0, by1 - by0
        for attempt in range(12):
            if attempt < 11:
                cx = rng.uniform(-0.2 * bw, width + 0.2 * bw)
                lo = horizon + 0.3 * bh if on_floor else 0.0
                cy = rng.uniform(min(lo, height - bh / 2), height + 0.2 * bh)
            else:  # last resort: fully inside the frame
                cx = rng.uniform(bw / 2, max(width - bw / 2, bw / 2 + 1))
                cy = rng.uniform(bh / 2, max(height - bh / 2, bh / 2 + 1))
            x0, y0 = int(round(cx - bw / 2)) - bx0, int(round(cy - bh / 2)) - by0
            box = np.array([x0 + bx0, y0 + by0, x0 + bx1, y0 + by1], dtype=np.float64)
            clipped = np.clip(box, 0, [width, height, width, height])
            cw, ch = clipped[2] - clipped[0], clipped[3] - clipped[1]
            xywh = [float(clipped[0]), float(clipped[1]), float(cw), float(ch)]
            inside = cw * ch / (bw * bh)
            if attempt == 11 or (inside > 0.6 and min(cw, ch) >= 4 and all(_iou(xywh, p[5]) < 0.3 for p in placed)):
                break
        placed.append((cy, rgb, alpha, x0, y0, xywh))

    boxes: list[list[float]] = [[] for _ in labels]
    for i in sorted(range(len(placed)), key=lambda i: placed[i][0]):  # far (high) first, near last
        _, rgb, alpha, x0, y0, xywh = placed[i]
        _paste(frame, rgb, alpha, x0, y0)
        boxes[i] = xywh
        if rng.random() < 0.15:  # debris or a rock partly in front of the animal
            x, y, w, h = xywh
            centre = (int(x + rng.choice([0.0, 1.0]) * w), int(y + rng.uniform(0.3, 1.0) * h))
            axes = (int(w * rng.uniform(0.12, 0.3)) + 1, int(h * rng.uniform(0.1, 0.25)) + 1)
            under = frame[min(max(centre[1], 0), height - 1), min(max(centre[0], 0), width - 1)]
            colour = tuple(float(v) for v in under * rng.uniform(0.5, 0.9))
            cv2.ellipse(frame, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return _imaging(frame, depth, style, rng), boxes


def _imaging(frame: np.ndarray, depth: float, style: FrameStyle, rng) -> np.ndarray:
    """Lamp and vignette, turbidity, marine snow, blur and sensor noise; to uint8."""
    h, w = frame.shape[:2]
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.6) * h
    dx2 = ((np.arange(w, dtype=np.float32) - cx) ** 2)[None, :]
    dy2 = ((np.arange(h, dtype=np.float32) - cy) ** 2)[:, None]
    lamp = (1.0 - rng.uniform(*style.vignette) / (w * w / 4 + h * h / 4) * (dx2 + dy2)) * rng.uniform(*style.brightness)
    t = rng.uniform(*style.turbidity)
    gain = lamp[..., None] * (np.asarray(style.lamp_bgr, np.float32) * np.float32(1 - t))
    frame *= gain
    frame += water_colour(depth).astype(np.float32) * np.float32(1.2 * t)
    for _ in range(int(rng.integers(*style.snow))):
        v = float(rng.uniform(120, 230))
        cv2.circle(frame, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.integers(0, 2)), (v, v, v), -1,
                   cv2.LINE_AA)
    # Noise before blur: correlated like video sensor noise (and the PNGs compress better). Uniform
    # noise (5x faster to draw than normal) with the same variance; the blur makes it near-Gaussian.
    noise = rng.random(frame.shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(1.6 * np.sqrt(12.0) * rng.uniform(*style.noise))
    frame += noise
    frame = cv2.GaussianBlur(frame, (0, 0), rng.uniform(*style.blur))
    np.clip(frame, 0, 255, out=frame)
    frame += 0.5
    return frame.astype(np.uint8)


# ---------------------------------------------------------------- the benchmark on disk

def _coco_header(preset: str, seed: int, shift: float) -> dict:
    return {
        "info": {"year": 2025, "version": str(GENERATOR_VERSION),
                 "description": f"Synthetic FathomNet-like benchmark (preset={preset}, seed={seed}, shift={shift})",
                 "contributor": "src.data.synthetic", "url": "", "date_created": "2025/01/08"},
        "images": [], "licenses": [{"id": 0, "name": "synthetic, CC0", "url": ""}], "annotations": [], "categories": [],
    }


def _render_chunk(job: tuple) -> list[tuple[dict, list[list[float]]]]:
    """Render and write a chunk of frames (runs in a worker process). Returns (image record, boxes) each."""
    split, seed, shift, frame_dir, genes, chunk = job
    style = split_style(split, shift)
    out = []
    for i, labels in chunk:
        rng = np.random.default_rng([seed, SPLIT_CODE[split], 1, i])  # per frame: any order, same pixels
        file_name = f"{uuid.UUID(bytes=rng.bytes(16), version=4)}.png"
        if split == "train":
            width, height = TRAIN_FRAME
        else:
            width, height = TEST_FRAMES[int(rng.choice(len(TEST_FRAMES), p=TEST_FRAME_P))]
        image, boxes = render_frame(labels, genes, width, height, style, rng)
        path = Path(frame_dir) / file_name
        ok, png = cv2.imencode(".png", image, PNG_PARAMS)
        if not ok:
            raise RuntimeError(f"could not encode frame {path}")
        atomic_write_bytes(path, png.tobytes())
        url = path.resolve().as_uri()
        captured = (dt.datetime(2012, 1, 1) + dt.timedelta(minutes=int(rng.integers(0, 6_000_000))))
        out.append(({"id": i + 1, "width": width, "height": height, "file_name": file_name, "license": 0,
                     "flickr_url": url, "coco_url": url, "date_captured": captured.strftime("%Y-%m-%d %H:%M:%S")},
                    boxes))
    return out


def _generate_split(split: str, counts: np.ndarray, genes, D, out_dir: Path, seed: int, shift: float,
                    preset: str, taxonomy: Taxonomy, pool: ProcessPoolExecutor | None,
                    progress: bool) -> tuple[dict, list[int]]:
    """Render one split's frames; returns (COCO dict, class index of each annotation in id order)."""
    frames = assign_frames(counts, D, np.random.default_rng([seed, SPLIT_CODE[split], 0]), MEAN_OBJECTS[split])
    frame_dir = out_dir / "frames" / split
    frame_dir.mkdir(parents=True, exist_ok=True)
    chunk = 16
    jobs = [(split, seed, shift, str(frame_dir), genes, list(enumerate(frames))[k:k + chunk])
            for k in range(0, len(frames), chunk)]
    bar = tqdm(total=len(frames), desc=f"{split} frames", disable=not progress, leave=False)
    results = []
    for part in (pool.map if pool else map)(_render_chunk, jobs):
        results.extend(part)
        bar.update(len(part))
    bar.close()
    coco = _coco_header(preset, seed, shift)
    coco["categories"] = [{"id": cid, "name": name, "supercategory": ""}
                          for cid, name in zip(taxonomy.category_ids, taxonomy.names)]
    labels_out = []
    for (image, boxes), labels in zip(results, frames):
        coco["images"].append(image)
        for label, box in zip(labels, boxes):
            labels_out.append(int(label))
            coco["annotations"].append({
                "id": len(labels_out), "image_id": image["id"],
                "category_id": int(taxonomy.category_ids[label]) if split == "train" else None,
                "segmentation": [], "area": float(box[2] * box[3]), "bbox": [float(v) for v in box], "iscrowd": 0,
            })
    return coco, labels_out


def generate_benchmark(out_dir: str | Path, preset: str = "demo", seed: int = 0, shift: float = DEFAULT_SHIFT,
                       taxonomy: Taxonomy | None = None, workers: int | None = None, progress: bool = True) -> Path:
    """Write a generated benchmark (frames, COCO train/test files, solution.csv) under out_dir.

    Frames are rendered by `workers` processes (default: up to 2 CPUs); the result does not depend on it.

    Deterministic for (preset, seed, shift): same JSON and CSV bytes, same pixels. Refuses to write into
    a folder that holds COCO files it did not generate. Returns out_dir."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be in 0..1, got {shift}")
    out_dir = Path(out_dir)
    if (out_dir / "dataset_train.json").exists() and not (out_dir / "generator.json").exists():
        raise FileExistsError(f"{out_dir} holds a dataset_train.json that this generator did not write; "
                              "choose another --out")
    taxonomy = taxonomy or load_taxonomy()
    workers = workers or min(2, os.cpu_count() or 1)
    (out_dir / "generator.json").unlink(missing_ok=True)  # the folder is incomplete until rewritten
    for split in SPLIT_CODE:  # frames of an earlier generation (ours, see the check above)
        for old in (out_dir / "frames" / split).glob("*.png"):
            old.unlink()
    genes = concept_genes(taxonomy)
    D = distance_matrix(taxonomy)
    p = PRESETS[preset]
    n = len(taxonomy)
    solution: list[tuple[int, str]] = []
    with contextlib.ExitStack() as stack:
        # spawn: workers never inherit a parent's thread pools (torch, OpenCV) mid-state.
        pool = stack.enter_context(ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=cv2.setNumThreads, initargs=(1,))) if workers > 1 else None
        for split, per_class in (("train", p.train_per_class), ("test", p.test_per_class)):
            coco, labels = _generate_split(split, np.full(n, per_class), genes, D, out_dir, seed, shift, preset,
                                           taxonomy, pool, progress)
            if split == "test":
                solution = [(ann["id"], taxonomy.names[label]) for ann, label in zip(coco["annotations"], labels)]
            atomic_write_text(out_dir / f"dataset_{split}.json", json.dumps(coco, indent=4) + "\n")
    frame = pd.DataFrame(solution, columns=["annotation_id", "concept_name"])
    atomic_write_text(out_dir / "solution.csv", frame.to_csv(index=False))
    atomic_write_json(out_dir / "generator.json", {
        "generator_version": GENERATOR_VERSION, "preset": preset, "seed": seed, "shift": shift,
        "preset_sizes": asdict(p), "train_style": asdict(split_style("train", shift)),
        "test_style": asdict(split_style("test", shift)), "classes": list(taxonomy.names),
    })
    return out_dir


# ---------------------------------------------------------------- preview contact sheet

def _frame_path(image: dict, coco_path: Path, split: str) -> Path:
    url = urlparse(image.get("coco_url") or "")
    if url.scheme == "file":
        return Path(unquote(url.path))
    return coco_path.parent / "frames" / split / image["file_name"]


def _crop(frame: np.ndarray, box, tile: int) -> np.ndarray:
    """A square crop 1.25x the box's longest side around its centre, padded at borders, resized to tile."""
    x, y, w, h = box
    side = max(w, h) * 1.25
    cx, cy = x + w / 2, y + h / 2
    M = np.array([[tile / side, 0, tile / 2 - cx * tile / side], [0, tile / side, tile / 2 - cy * tile / side]])
    return cv2.warpAffine(frame, M, (tile, tile), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(128, 128, 128))


def write_preview(root: str | Path, out_png: str | Path, taxonomy: Taxonomy | None = None, per_row: int = 6,
                  tile: int = 72) -> Path:
    """Contact sheet: one row per phylum, `per_row` concepts each (spread over its classes); a train crop
    of each on the left, a test (shifted) crop of the same concepts on the right."""
    from PIL import Image, ImageDraw  # text rendering; only needed here

    root, taxonomy = Path(root), taxonomy or load_taxonomy()
    data = {s: json.loads((root / f"dataset_{s}.json").read_text()) for s in ("train", "test")}
    truth = pd.read_csv(root / "solution.csv").set_index("annotation_id")["concept_name"]
    best_crop: dict[tuple[str, str], tuple[float, dict, list]] = {}  # largest box away from the border
    for split, coco in data.items():
        images = {im["id"]: im for im in coco["images"]}
        for ann in coco["annotations"]:
            name = (taxonomy.names[taxonomy.category_ids.index(ann["category_id"])] if split == "train"
                    else truth.get(ann["id"]))
            image, (x, y, w, h) = images[ann["image_id"]], ann["bbox"]
            score = w * h * (1.0 if 0 < x and 0 < y and x + w < image["width"] and y + h < image["height"] else 0.01)
            if score > best_crop.get((split, name), (-1.0,))[0]:
                best_crop[(split, name)] = (score, image, ann["bbox"])
    phyla = sorted({lin[1] for lin in taxonomy.lineages})
    label_w, gap, caption = 118, 14, 12
    width = label_w + 2 * per_row * tile + gap
    height = 16 + len(phyla) * (tile + caption + 4)
    sheet = np.full((height, width, 3), 255, np.uint8)
    texts = [((label_w, 2), "train"), ((label_w + per_row * tile + gap, 2), "test (shifted)")]
    for r, phylum in enumerate(phyla):
        members = sorted((i for i, lin in enumerate(taxonomy.lineages) if lin[1] == phylum),
                         key=lambda i: [str(t) for t in taxonomy.lineages[i]])
        picks = np.unique(np.linspace(0, len(members) - 1, min(per_row, len(members))).round().astype(int))
        chosen = [members[k] for k in picks]  # spread over the phylum's classes
        y = 16 + r * (tile + caption + 4)
        texts.append(((4, y + tile // 2 - 6), phylum))
        for col, i in enumerate(chosen):
            name = taxonomy.names[i]
            for side, split in enumerate(("train", "test")):
                if (split, name) not in best_crop:
                    continue
                _, image, box = best_crop[(split, name)]
                frame = cv2.imread(str(_frame_path(image, root / f"dataset_{split}.json", split)), cv2.IMREAD_COLOR)
                if frame is None:
                    continue
                x = label_w + side * (per_row * tile + gap) + col * tile
                sheet[y:y + tile, x:x + tile - 2] = _crop(frame, box, tile)[:, : tile - 2]
                texts.append(((x, y + tile), name[: tile // 6]))
    pil = Image.fromarray(cv2.cvtColor(sheet, cv2.COLOR_BGR2RGB))
    draw = ImageDraw.Draw(pil)
    for xy, text in texts:
        draw.text(xy, text, fill=(0, 0, 0))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        # A 256-colour palette keeps the README picture small.
        pil.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    return out_png


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.data.synthetic",
        description="Generate a FathomNet-like benchmark (COCO files, PNG frames, solution.csv) with the real "
                    "79 concepts and taxonomy; the test split is shifted (smaller, blurrier objects).")
    parser.add_argument("--out", required=True, type=Path, help="output folder (ROOT)")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="tiny: 3 train / 1 test object per class; demo: 20 / 5; bench: 100 / 10 (default demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shift", type=float, default=DEFAULT_SHIFT,
                        help="test shift strength 0..1: test objects are (1 - shift/2) times the train size, "
                             f"with more blur, turbidity and noise (default {DEFAULT_SHIFT})")
    parser.add_argument("--preview", type=Path, default=None, help="also write a contact sheet PNG here")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes rendering frames (default: up to 2); the output does not depend on it")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if not 0.0 <= args.shift <= 1.0:
        parser.error(f"--shift must be in 0..1, got {args.shift}")
    start = time.perf_counter()
    try:
        root = generate_benchmark(args.out, args.preset, args.seed, args.shift, workers=args.workers,
                                  progress=not args.no_progress)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_train = len(json.loads((root / "dataset_train.json").read_text())["annotations"])
    n_test = len(pd.read_csv(root / "solution.csv"))
    print(f"wrote {root}: {n_train} train and {n_test} test annotations in {time.perf_counter() - start:.1f} s")
    if args.preview:
        print(f"preview: {write_preview(root, args.preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
