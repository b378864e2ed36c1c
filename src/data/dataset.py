"""Torch datasets over the crop cache (fast path) and over ROI PNG files (for comparison)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from src.data.coco import to_rgb
from src.data.transforms import downscale


class CropCacheDataset(Dataset):
    """Items (x float tensor (V, 3, H, W), label int) from a (N, V, S, S, 3) uint8 array or memmap.

    Each view is transformed independently. `view_indices` selects views along axis 1 (default all);
    `downscale_factors` (N,) optionally shrinks item i by its own factor before the transform (shifted
    validation, see src.data.splits.shifted_downscale_factors). A memmap is reopened by file name in each
    DataLoader worker instead of being pickled whole."""

    def __init__(self, crops: np.ndarray, labels, transform, view_indices=None, downscale_factors=None):
        if crops.ndim != 5 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8 (N, V, S, S, 3), got {crops.dtype} {crops.shape}")
        self.crops = crops
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(crops):
            raise ValueError(f"{len(self.labels)} labels for {len(crops)} crops")
        self.transform = transform
        self.view_indices = list(range(crops.shape[1])) if view_indices is None else list(view_indices)
        self.downscale_factors = None if downscale_factors is None else np.asarray(downscale_factors, np.float32)
        if self.downscale_factors is not None and len(self.downscale_factors) != len(crops):
            raise ValueError(f"{len(self.downscale_factors)} downscale factors for {len(crops)} crops")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        views = self.crops[i, self.view_indices]
        factor = None if self.downscale_factors is None else float(self.downscale_factors[i])
        out = []
        for view in views:
            view = np.asarray(view)
            if factor is not None and factor < 1:
                view = downscale(view, factor)
            out.append(self.transform(view))
        return torch.stack(out), int(self.labels[i])

    def __getstate__(self):
        state = dict(self.__dict__)
        crops = state["crops"]
        if isinstance(crops, np.memmap) and crops.filename:
            state["crops"] = ("memmap", crops.filename, crops.offset, crops.shape, crops.dtype.str)
        return state

    def __setstate__(self, state):
        crops = state["crops"]
        if isinstance(crops, tuple) and crops[0] == "memmap":
            _, filename, offset, shape, dtype = crops
            state["crops"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)


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
