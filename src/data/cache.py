"""Decoded crop cache: every annotation's views decoded once into a fixed-size uint8 memmap.

Layout, one folder per build under `cache_dir`, named <coco stem>_s<size>_<views>_<key>:
  crops.npy    uint8 (N, V, S, S, 3) RGB, opened with mmap_mode='r'; views squared as in src.data.crops
  crops_<view>.npy   instead of crops.npy when the views have different sizes (data.view_sizes): one
               uint8 (N, S_v, S_v, 3) per view, and the folder is named <coco stem>_s<S_1>-<S_2>-..._<views>_<key>
  index.csv    one row per annotation, aligned with crops (annotation_id order): annotation_id, image_id,
               label (canonical class index = taxonomy position, -1 unknown/test), concept_name, box_w,
               box_h (clipped box in frame pixels), frame_w, frame_h, problem ('' when the crop is good)
  meta.json    key, inputs, size (sizes per view when they differ), views, fill, class order; written last,
               so its presence marks a complete build
The key hashes the COCO file's and every referenced frame's size and mtime with the build parameters:
when any of them changes a new folder is built, and the superseded build of the same inputs is removed.
Annotations with a problem (frame missing or undecodable: zeros; bad box: a 1-pixel box at the nearest
position) keep their row so test predictions cover every id; training drops them, and `has_pixels` tells
the rows whose crops are all zeros (src.data.training and src.inference refuse to predict those by default).
Builds are locked (src.artifacts.run_lock): a second process waits for the first build of the same
inputs and then opens it; a build after a killed one removes the killed one's temporary crops file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from src.artifacts import atomic_path, atomic_write_json, atomic_write_with, remove_stale_temps, run_lock
from src.data.coco import Coco, ImageDecodeError, load_coco, read_rgb
from src.data.crops import DEFAULT_FILL, BadBoxError, clip_box, fit_square, one_or_per_view, parse_view, square_view
from src.taxonomy import Taxonomy, load_taxonomy

CACHE_VERSION = 1
INDEX_COLUMNS = ("annotation_id", "image_id", "label", "concept_name", "box_w", "box_h", "frame_w", "frame_h",
                 "problem")
NO_FRAME = "image_id not in images"
UNDECODABLE = "undecodable frame"  # also a frame file that is missing
NO_PIXELS = (NO_FRAME, UNDECODABLE)  # problems that leave a row's crops all zeros


@dataclass
class CropCache:
    """A built cache: crops (N, V, S, S, 3) uint8 memmap aligned with the rows of `index`, or, when the views
    have different sizes, a tuple of V memmaps (N, S_v, S_v, 3)."""

    crops: np.ndarray | tuple[np.ndarray, ...]
    views: tuple[str, ...]
    sizes: tuple[int, ...]  # per view
    index: pd.DataFrame
    path: Path
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"].to_numpy(np.int64)

    @property
    def good(self) -> np.ndarray:
        """Boolean mask of rows whose crop is good (no problem)."""
        return (self.index["problem"] == "").to_numpy()

    @property
    def has_pixels(self) -> np.ndarray:
        """Boolean mask of rows cut from a decoded frame (False: frame missing or undecodable, zero crops)."""
        return ~self.index["problem"].str.startswith(NO_PIXELS).to_numpy(bool)


def nearest_box(bbox, frame_w: int, frame_h: int):
    """A 1x1-or-larger box inside the frame, as close as possible to a bbox that `clip_box` rejects."""
    try:
        x, y, w, h = (float(v) if np.isfinite(float(v)) else 0.0 for v in bbox)
    except (TypeError, ValueError):
        x = y = w = h = 0.0
    x0 = int(min(max(x, 0), frame_w - 1))
    y0 = int(min(max(y, 0), frame_h - 1))
    return x0, y0, int(min(max(x0 + 1, x + w), frame_w)), int(min(max(y0 + 1, y + h), frame_h))


def download_command(root: str | Path, split: str) -> str:
    """The command that fetches the frames of one split of a dataset folder and cuts its ROIs."""
    return f"python -m src.data.download {Path(root) / f'dataset_{split}.json'} {Path(root) / split}"


def annotations_without_frames(coco: Coco, images_dir: str | Path) -> list[int]:
    """Ids of the annotations whose frame file is not in images_dir (or whose image is not listed): the
    crop cache would give them zero crops."""
    present = {image_id: (Path(images_dir) / coco.frame_name(image_id)).is_file() for image_id in coco.images}
    return [int(a["id"]) for a in coco.annotations if not present.get(int(a["image_id"]), False)]


def view_sizes(size, views) -> tuple[int, ...]:
    """Per-view crop sizes from one size for every view or a sequence of one per view."""
    if isinstance(size, int):
        return (size,) * len(views)
    sizes = tuple(int(s) for s in size)
    if len(sizes) != len(views):
        raise ValueError(f"{len(sizes)} crop sizes {sizes} for {len(views)} views {tuple(views)}")
    return sizes


def _sizes_text(sizes: tuple[int, ...], sep: str) -> str:
    """The size part of a cache's key and folder name: the size alone when the views share it (as before
    per-view sizes existed, so those caches keep their keys), else every view's."""
    one = one_or_per_view(sizes)
    return str(one) if isinstance(one, int) else sep.join(map(str, sizes))


def cache_key(coco_json: Path, images_dir: Path, coco: Coco, size, views, fill: int,
              classes: tuple[str, ...]) -> str:
    """Hash of the inputs' sizes and mtimes, the build parameters (size: one, or one per view) and the
    class order."""
    digest = hashlib.sha256()
    stat = coco_json.stat()
    sizes = _sizes_text(view_sizes(size, views), ",")
    digest.update(f"v{CACHE_VERSION}|{sizes}|{','.join(views)}|{fill}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update("|".join(classes).encode())
    for image_id in sorted(coco.images):
        path = images_dir / coco.frame_name(image_id)
        try:
            s = path.stat()
            digest.update(f"|{image_id}:{s.st_size}:{s.st_mtime_ns}".encode())
        except FileNotFoundError:
            digest.update(f"|{image_id}:missing".encode())
    return digest.hexdigest()[:16]


def _build_index(coco: Coco, taxonomy: Taxonomy) -> pd.DataFrame:
    names = [coco.label_name(a) for a in coco.annotations]
    return pd.DataFrame({
        "annotation_id": [int(a["id"]) for a in coco.annotations],
        "image_id": [int(a["image_id"]) for a in coco.annotations],
        "label": taxonomy.indices(names),
        "concept_name": names,
        "box_w": 0, "box_h": 0, "frame_w": 0, "frame_h": 0, "problem": "",
    }, columns=list(INDEX_COLUMNS))


def _fill_frame(targets: list[np.ndarray], rows: list[int], frame_path: Path, coco: Coco,
                sizes: tuple[int, ...], views: tuple[str, ...], fill: int) -> dict[int, dict]:
    """Decode one frame and write its annotations' views into `targets` (per view (N, S_v, S_v, 3));
    returns index updates by row."""
    try:
        rgb = read_rgb(frame_path)
    except ImageDecodeError as e:
        return {r: {"problem": f"{UNDECODABLE}: {str(e).split(': ', 1)[-1]}"} for r in rows}
    frame_h, frame_w = rgb.shape[:2]
    # the 'frame' view is the same for every box of the frame: squared once
    frame_square = {v: fit_square(rgb, sizes[v], fill) for v, view in enumerate(views) if view == "frame"}
    updates = {}
    for r in rows:
        bbox = coco.annotations[r].get("bbox")
        problem = ""
        try:
            box = clip_box(bbox, frame_w, frame_h)
        except BadBoxError as e:
            problem, box = str(e), nearest_box(bbox or [0, 0, 0, 0], frame_w, frame_h)
        for v, view in enumerate(views):
            targets[v][r] = frame_square[v] if v in frame_square else square_view(rgb, box, view, sizes[v], fill)
        updates[r] = {"box_w": box[2] - box[0], "box_h": box[3] - box[1], "frame_w": frame_w, "frame_h": frame_h,
                      "problem": problem}
    return updates


def build_crop_cache(coco_json, images_dir, out_dir, size, views=("roi",), taxonomy: Taxonomy | None = None,
                     fill: int = DEFAULT_FILL, key: str = "", workers: int | None = None,
                     progress: bool = True, coco: Coco | None = None) -> CropCache:
    """Decode every annotation's views into out_dir/crops.npy (crops_<view>.npy when `size` gives the views
    different sizes) + index.csv + meta.json (meta last).

    `size`: one crop size, or one per view. `coco`: the already parsed `coco_json`, when the caller has it
    (saves parsing it twice)."""
    coco_json, images_dir, out_dir = Path(coco_json), Path(images_dir), Path(out_dir)
    views = tuple(views)
    for v in views:
        parse_view(v)
    sizes = view_sizes(size, views)
    one_size = one_or_per_view(sizes)
    taxonomy = taxonomy or load_taxonomy()
    coco = coco if coco is not None else load_coco(coco_json)
    index = _build_index(coco, taxonomy)
    by_image: dict[int, list[int]] = defaultdict(list)
    for row, ann in enumerate(coco.annotations):
        by_image[int(ann["image_id"])].append(row)

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as files:
        if isinstance(one_size, int):
            crops = [np.lib.format.open_memmap(files.enter_context(atomic_path(out_dir / "crops.npy")), mode="w+",
                                               dtype=np.uint8, shape=(len(index), len(views), one_size, one_size, 3))]
            targets = [crops[0][:, v] for v in range(len(views))]
        else:
            crops = [np.lib.format.open_memmap(files.enter_context(atomic_path(out_dir / f"crops_{view}.npy")),
                                               mode="w+", dtype=np.uint8, shape=(len(index), s, s, 3))
                     for view, s in zip(views, sizes)]
            targets = crops
        updates: dict[int, dict] = {}
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            futures = []
            for image_id, rows in by_image.items():
                image = coco.images.get(image_id)
                if image is None:
                    updates.update({r: {"problem": NO_FRAME} for r in rows})
                    continue
                frame_path = images_dir / coco.frame_name(image_id)
                futures.append(pool.submit(_fill_frame, targets, rows, frame_path, coco, sizes, views, fill))
            bar = tqdm(as_completed(futures), total=len(futures),
                       desc=f"cache {coco_json.stem} {_sizes_text(sizes, '/')}px", unit="img", disable=not progress)
            for future in bar:
                updates.update(future.result())
        for array in crops:
            array.flush()
        del crops, targets
    if updates:
        changes = pd.DataFrame.from_dict(updates, orient="index")
        for column in changes.columns:
            known = changes[column].notna()
            index.loc[changes.index[known], column] = changes.loc[known, column].astype(index[column].dtype)
    atomic_write_with(out_dir / "index.csv", lambda p: index.to_csv(p, index=False))
    atomic_write_json(out_dir / "meta.json", {
        "version": CACHE_VERSION, "key": key, "coco_json": str(coco_json.resolve()),
        "images_dir": str(images_dir.resolve()),
        **({"size": one_size} if isinstance(one_size, int) else {"size": None, "sizes": list(sizes)}),
        "views": list(views), "fill": fill,
        "n": len(index), "n_problems": int((index["problem"] != "").sum()), "classes": list(taxonomy.names),
        "build_seconds": round(time.perf_counter() - start, 2),
    })
    return open_crop_cache(out_dir)


def open_crop_cache(path) -> CropCache:
    """Open a complete cache folder (memmap, read-only); FileNotFoundError if the build is incomplete."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: no meta.json, not a complete crop cache")
    meta = json.loads(meta_path.read_text())
    index = pd.read_csv(path / "index.csv", keep_default_na=False,
                        dtype={"concept_name": str, "problem": str})
    views = tuple(meta["views"])
    if meta.get("sizes"):
        sizes = tuple(int(s) for s in meta["sizes"])
        files = [f"crops_{view}.npy" for view in views]
        crops = tuple(np.load(path / name, mmap_mode="r") for name in files)
    else:
        sizes, files = (int(meta["size"]),) * len(views), ["crops.npy"]
        crops = np.load(path / "crops.npy", mmap_mode="r")
    for name, array in zip(files, crops if isinstance(crops, tuple) else [crops]):
        if array.shape[0] != len(index):
            raise ValueError(f"{path}: {name} has {array.shape[0]} rows but index.csv {len(index)}")
    return CropCache(crops=crops, views=views, sizes=sizes, index=index, path=path,
                     classes=tuple(meta["classes"]))


def load_or_build_crop_cache(coco_json, images_dir, cache_dir, size, views=("roi",),
                             taxonomy: Taxonomy | None = None, progress: bool = True,
                             fill: int = DEFAULT_FILL) -> CropCache:
    """The cache for these inputs and parameters (`size`: one crop size, or one per view): opened if already
    built, else built (and stale ones removed)."""
    coco_json, images_dir, cache_dir = Path(coco_json), Path(images_dir), Path(cache_dir)
    views = tuple(views)
    for v in views:
        parse_view(v)
    taxonomy = taxonomy or load_taxonomy()
    coco = load_coco(coco_json)
    key = cache_key(coco_json, images_dir, coco, size, views, fill, tuple(taxonomy.names))
    prefix = f"{coco_json.stem}_s{_sizes_text(view_sizes(size, views), '-')}_{'-'.join(views)}_"
    folder = cache_dir / f"{prefix}{key}"
    meta_path = folder / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        return open_crop_cache(folder)
    with run_lock(folder, wait=True):
        if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
            return open_crop_cache(folder)  # built by the process we waited for
        remove_stale_temps(folder)  # a killed build's partial crops.npy
        cache = build_crop_cache(coco_json, images_dir, folder, size, views, taxonomy, fill, key,
                                 progress=progress, coco=coco)
    _remove_superseded(cache_dir, prefix, folder, coco_json)
    return cache


def _remove_superseded(cache_dir: Path, prefix: str, keep: Path, coco_json: Path) -> None:
    """Delete older builds of the same COCO file with the same size and views (their inputs changed)."""
    for other in cache_dir.glob(f"{prefix}*"):
        if other == keep or not other.is_dir():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # possibly a build in progress elsewhere: leave it
        if meta.get("coco_json") == str(coco_json.resolve()):
            shutil.rmtree(other, ignore_errors=True)
