"""Validation splits by frame, and the per-crop down-scaling of a "shifted" validation set.

A random split over ROIs is far too optimistic (ROIs of one frame are near duplicates; docs/method.md
section 1): every ROI of a frame goes to the same side, classes stratified as far as the groups allow.
The test ROIs are smaller than the training ones, so a second validation view down-scales each crop to
a size drawn from the test size distribution.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def frame_grouped_split(labels, groups, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): all rows of a group (image_id) on one side, labels stratified.

    Uses the first fold of StratifiedGroupKFold with round(1 / val_fraction) folds, so the validation
    share is about val_fraction (exact only as far as group sizes allow). val_fraction 0 -> no validation."""
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    n = len(labels)
    if val_fraction <= 0:
        return np.arange(n), np.array([], dtype=np.int64)
    if val_fraction > 0.5:
        raise ValueError(f"val_fraction must be in [0, 0.5], got {val_fraction}")
    n_splits = max(2, round(1 / val_fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} frames are too few for a {val_fraction:g} validation split by frame")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(n), labels, groups))
    return np.sort(train_idx), np.sort(val_idx)


def shifted_downscale_factors(sizes, target_sizes, crop_size: int | None = None) -> np.ndarray:
    """Per-crop factors in (0, 1] that make the crops' sizes follow the target size distribution.

    Quantile matching: the crop at quantile q of `sizes` (e.g. max(box_w, box_h) of validation ROIs) is
    shrunk to the size at quantile q of `target_sizes` (e.g. the test boxes'), never enlarged. With
    `crop_size`, a box bigger than the crop counts as crop_size pixels, the resolution it has in the cache.
    Deterministic; feed the result to CropCacheDataset(downscale_factors=...)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    target = np.sort(np.asarray(target_sizes, dtype=np.float64))
    if len(target) == 0 or np.any(target <= 0):
        raise ValueError("target_sizes must be non-empty and positive")
    if len(sizes) == 0:
        return np.ones(0, dtype=np.float32)
    effective = np.maximum(sizes, 1.0)
    if crop_size is not None:
        effective = np.minimum(effective, crop_size)
    order = np.argsort(sizes, kind="stable")
    quantiles = np.empty(len(sizes))
    quantiles[order] = (np.arange(len(sizes)) + 0.5) / len(sizes)
    wanted = np.quantile(target, quantiles)
    return np.clip(wanted / effective, 1e-3, 1.0).astype(np.float32)
