"""Torch datasets over the crop cache (fast path) and over ROI PNG files (for comparison)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from src.data.coco import to_rgb
from src.data.transforms import ViewTransforms, downscale


class CropCacheDataset(Dataset):
    """Items (x, label int) from a (N, V, S, S, 3) uint8 array or memmap, or from a tuple of V arrays
    (N, S_v, S_v, 3) (views of different sizes, src.data.cache).

    x is a float tensor (V, 3, H, W); when the views have different sizes (tuple crops, or a `ViewTransforms`
    giving them different output sizes) it is a tuple of V tensors (3, H_v, W_v), which the DataLoader batches
    into a list of (B, 3, H_v, W_v). Each view is transformed independently, by `transform` or by its own
    transform of a ViewTransforms. `view_indices` selects views (default all); `downscale_factors` (N,)
    optionally shrinks item i by its own factor before the transform (shifted validation, see
    src.data.splits.shifted_downscale_factors). A memmap is reopened by file name in each DataLoader worker
    instead of being pickled whole."""

    def __init__(self, crops, labels, transform, view_indices=None, downscale_factors=None):
        per_view = isinstance(crops, (tuple, list))
        arrays = list(crops) if per_view else [crops]
        if any(a.ndim != (4 if per_view else 5) or a.shape[-1] != 3 or a.dtype != np.uint8 for a in arrays) or \
                any(len(a) != len(arrays[0]) for a in arrays):
            raise ValueError("crops must be uint8 (N, V, S, S, 3) or V arrays (N, S_v, S_v, 3), got "
                             f"{[(str(a.dtype), a.shape) for a in arrays]}")
        self.crops = tuple(crops) if per_view else crops
        n_views = len(arrays) if per_view else crops.shape[1]
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(arrays[0]):
            raise ValueError(f"{len(self.labels)} labels for {len(arrays[0])} crops")
        self.transform = transform
        self.view_indices = list(range(n_views)) if view_indices is None else list(view_indices)
        if isinstance(transform, ViewTransforms) and len(transform) != len(self.view_indices):
            raise ValueError(f"{len(transform)} view transforms for {len(self.view_indices)} views")
        self.downscale_factors = None if downscale_factors is None else np.asarray(downscale_factors, np.float32)
        if self.downscale_factors is not None and len(self.downscale_factors) != len(self.labels):
            raise ValueError(f"{len(self.downscale_factors)} downscale factors for {len(self.labels)} crops")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        per_view = isinstance(self.crops, tuple)
        # a copy, as the fancy index of the one-array layout makes: a memmap's rows are read-only
        views = [np.array(self.crops[v][i]) for v in self.view_indices] if per_view else self.crops[i, self.view_indices]
        factor = None if self.downscale_factors is None else float(self.downscale_factors[i])
        several = isinstance(self.transform, ViewTransforms)
        out = []
        for k, view in enumerate(views):
            view = np.asarray(view)
            if factor is not None and factor < 1:
                view = downscale(view, factor)
            out.append(self.transform[k](view) if several else self.transform(view))
        if per_view or several:
            return tuple(out), int(self.labels[i])
        return torch.stack(out), int(self.labels[i])

    def __getstate__(self):
        state = dict(self.__dict__)
        crops = state["crops"]
        state["crops"] = tuple(map(_pickle_memmap, crops)) if isinstance(crops, tuple) else _pickle_memmap(crops)
        return state

    def __setstate__(self, state):
        crops = state["crops"]
        per_view = isinstance(crops, tuple) and not isinstance(crops[0], str)  # not one pickled memmap
        state["crops"] = tuple(map(_unpickle_memmap, crops)) if per_view else _unpickle_memmap(crops)
        self.__dict__.update(state)


def _pickle_memmap(crops):
    """A memmap as its file name and layout (a worker reopens it), anything else as it is."""
    if isinstance(crops, np.memmap) and crops.filename:
        return ("memmap", crops.filename, crops.offset, crops.shape, crops.dtype.str)
    return crops


def _unpickle_memmap(crops):
    if isinstance(crops, tuple) and crops[0] == "memmap":
        _, filename, offset, shape, dtype = crops
        return np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
    return crops


def with_transform(dataset: CropCacheDataset | Subset, transform) -> CropCacheDataset | Subset:
    """The same items of a CropCacheDataset (or a Subset of one) through another transform (test-time views)."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    other = copy.copy(dataset)
    other.transform = transform
    return other


class PngRoiDataset(Dataset):
    """Items (transform(PIL RGB image), label int) decoded from ROI PNG files on every access.

    The slow baseline the cache replaces; greyscale/palette/alpha PNGs are converted to RGB."""

    def __init__(self, paths, labels, transform, root: str | Path | None = None):
        root = Path(root) if root is not None else None
        self.paths = [root / p if root is not None else Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.labels)} labels for {len(self.paths)} paths")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            im.load()
            image = im if im.mode == "RGB" else Image.fromarray(to_rgb(im))
        return self.transform(image), int(self.labels[i])
