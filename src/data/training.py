"""The data of one training run: crop caches of both splits, the frame-grouped validation split,
pseudo-labelled test rows, transforms and DataLoaders.

    train_cache, test_cache = load_split(cfg, taxonomy, "train"), load_split(cfg, taxonomy, "test")
    warnings = check_missing_pixels(cfg, train_cache, test_cache)   # refuses, or warns (print them)
    data = build_datasets(cfg, taxonomy, train_cache, test_cache)
    loaders = build_loaders(cfg, data, rank, world, device)

With augment.batched the training loader yields raw uint8 crops and `loaders.augment` (the batched
augmentation of src.data.gpu_augment, drawing from `loaders.augment_generator`) turns each batch into the
network's input on the training device; otherwise the loader's items are augmented per sample.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from src.config import Config
from src.data.cache import CropCache, download_command, load_or_build_crop_cache
from src.data.crops import one_or_per_view
from src.data.dataset import CropCacheDataset
from src.data.gpu_augment import build_batch_augment, uint8_view
from src.data.splits import frame_grouped_split, shifted_downscale_factors
from src.data.transforms import build_eval_transform, build_train_transform
from src.gates import pseudo_label_targets
from src.runtime import seed_worker
from src.taxonomy import Taxonomy


class DataMissingError(FileNotFoundError):
    """The dataset folder lacks the files training needs; the message gives the commands that make them."""


class PseudoLabelError(ValueError):
    """data.pseudo_labels cannot be read or does not match the test set; the message says why."""


GENERATOR_PRESETS = ("tiny", "demo", "bench")  # src.synthetic.generator's presets


def generated_preset(root: Path) -> tuple[str, int]:
    """(preset, seed) of a generated benchmark folder: from its generator.json, else guessed from the
    folder's name (inputs/synthetic/tiny: tiny), else the demo preset."""
    try:
        record = json.loads((root / "generator.json").read_text())
        return str(record["preset"]), int(record.get("seed", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return (root.name if root.name in GENERATOR_PRESETS else "demo"), 0


def check_data(root: Path) -> None:
    """Stop at once, with the commands that fetch or generate the data, when root is incomplete."""
    needed = [root / "dataset_train.json", root / "dataset_test.json", root / "train" / "images",
              root / "test" / "images"]
    missing = [str(p) for p in needed if not p.exists()]
    if not missing:
        return
    downloads = f"  {download_command(root, 'train')}\n  {download_command(root, 'test')}"
    has_coco = (root / "dataset_train.json").exists() and (root / "dataset_test.json").exists()
    if "synthetic" in root.parts or (root / "generator.json").is_file():
        preset, seed = generated_preset(root)
        generate = "" if has_coco else f"  python -m src.synthetic --out {root} --preset {preset} --seed {seed}\n"
        make = generate + downloads
    else:
        fetch = "" if has_coco else f"  python -m src.data.fetch --competition fathomnet-2025 --out {root}\n"
        make = (fetch + downloads + "\n(no Kaggle access? cfg/demo_*.yaml train on the generated benchmark in "
                "inputs/synthetic/demo)")
    raise DataMissingError(f"data missing under {root}: {', '.join(missing)}.\nMake it with:\n{make}")


def load_split(cfg: Config, taxonomy: Taxonomy, split: str, progress: bool = True) -> CropCache:
    """The CropCache (crops (N, V, S, S, 3) uint8, or per-view (N, S_v, S_v, 3) with data.view_sizes; index
    DataFrame) of ROOT/dataset_<split>.json, built in data.cache_dir (default ROOT/cache)."""
    root = Path(cfg.data.root)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else root / "cache"
    return load_or_build_crop_cache(root / f"dataset_{split}.json", root / split / "images", cache_dir,
                                    one_or_per_view(cfg.data.crop_sizes()), views=tuple(cfg.data.views),
                                    taxonomy=taxonomy, progress=progress)


def _example(cache: CropCache, rows: np.ndarray) -> str:
    first = cache.index.iloc[rows[0]]
    return f"e.g. annotation {first.annotation_id} of image {first.image_id}: {first.problem}"


def check_missing_pixels(cfg: Config, train_cache: CropCache, test_cache: CropCache) -> list[str]:
    """Refuse (DataMissingError) to predict test ROIs without pixels unless data.allow_missing_test, or to
    train when more than data.max_missing_train_share of the labelled training ROIs have none; returns
    the warnings to print for what is dropped or allowed (rows without pixels would be black crops)."""
    root, warnings = Path(cfg.data.root), []
    test_rows = np.flatnonzero(~test_cache.has_pixels)
    if len(test_rows):
        what = (f"{len(test_rows)} of {len(test_cache)} test ROIs have no pixels (frame missing or undecodable; "
                f"{_example(test_cache, test_rows)})")
        if not cfg.data.allow_missing_test:
            raise DataMissingError(f"{what}: their predictions would come from black crops. Fetch the frames with\n"
                                   f"  {download_command(root, 'test')}\nor set data.allow_missing_test=true "
                                   "to predict them anyway")
        warnings.append(f"warning: {what}: predicted from black crops (data.allow_missing_test)")
    labelled = train_cache.labels >= 0
    no_pixels = np.flatnonzero(labelled & ~train_cache.has_pixels)
    bad_box = np.flatnonzero(labelled & train_cache.has_pixels & ~train_cache.good)
    share = len(no_pixels) / max(1, int(labelled.sum()))
    if len(no_pixels):
        what = (f"{len(no_pixels)} of {int(labelled.sum())} labelled training ROIs ({share:.1%}) have no pixels "
                f"(frame missing or undecodable; {_example(train_cache, no_pixels)})")
        fix = f"fetch the frames with\n  {download_command(root, 'train')}"
        if share > cfg.data.max_missing_train_share:
            raise DataMissingError(f"{what}, more than data.max_missing_train_share="
                                   f"{cfg.data.max_missing_train_share:g}: {fix}\nor raise that limit to train "
                                   "without them")
        warnings.append(f"warning: {what}: training without them; {fix}")
    if len(bad_box):
        warnings.append(f"warning: {len(bad_box)} labelled training ROIs have a bad box and are not trained on "
                        f"({_example(train_cache, bad_box)})")
    return warnings


def read_pseudo_labels(path: str | Path, test_index: pd.DataFrame, taxonomy: Taxonomy) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the test cache named in a CSV annotation_id,concept_name[,target_taxon], and their training
    targets: the class index, or C + node for a row naming a target_taxon (`src.gates.pseudo_label_targets`)."""
    table = pd.read_csv(path, keep_default_na=False, dtype={"concept_name": str, "target_taxon": str})
    if not {"annotation_id", "concept_name"} <= set(table.columns):
        raise ValueError(f"{path}: needs columns annotation_id,concept_name, has {list(table.columns)}")
    repeated = table["annotation_id"][table["annotation_id"].duplicated()].unique()
    if len(repeated):  # one ROI, several labels (or one label twice): training on both would be silent noise
        raise ValueError(f"{path}: {len(repeated)} annotation ids appear more than once (one pseudo-label per ROI), "
                         f"e.g. {sorted(repeated.tolist())[:10]}")
    try:
        labels, _ = pseudo_label_targets(table, taxonomy)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    row_of = pd.Series(np.arange(len(test_index)), index=test_index["annotation_id"].to_numpy())
    missing = ~table["annotation_id"].isin(row_of.index)
    if missing.any():
        raise ValueError(f"{path}: {int(missing.sum())} annotation ids not in the test set, "
                         f"e.g. {table.annotation_id[missing].head(3).tolist()}")
    return row_of[table["annotation_id"]].to_numpy(), labels


@dataclass
class Datasets:
    train: Dataset
    val: dict[str, Dataset]            # 'val' and optionally 'shifted' (empty when no split)
    val_rows: np.ndarray               # rows of the train cache in the validation split
    val_labels: np.ndarray             # their class indices
    test: Dataset
    set_targets: bool = False          # some pseudo-labels are coarse (target ids >= C: sets of concepts)


def build_datasets(cfg: Config, taxonomy: Taxonomy, train_cache: CropCache, test_cache: CropCache) -> Datasets:
    """Frame-grouped split, pseudo-labelled test rows added to training, train / eval transforms."""
    a = cfg.augment
    size = one_or_per_view(cfg.data.input_sizes())
    if a.batched:  # raw uint8 views: the loop augments whole batches on the device (Loaders.augment)
        train_tf = uint8_view
    else:
        train_tf = build_train_transform(size, rrc_scale=tuple(a.rrc_scale), hflip=a.hflip,
                                         color_jitter=a.color_jitter, pca_lighting=a.pca_lighting,
                                         downscale=a.downscale, downscale_p=a.downscale_p)
    eval_tf = build_eval_transform(size)
    labels = train_cache.labels
    # Rows the cache flags (frame missing, bad box) keep their place but are not trained on.
    rows = np.flatnonzero((labels >= 0) & train_cache.good)
    if cfg.data.val_fraction > 0:
        tr, va = frame_grouped_split(labels[rows], train_cache.index["image_id"].to_numpy()[rows],
                                     cfg.data.val_fraction,
                                     cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed)
        train_rows, val_rows = rows[np.sort(tr)], rows[np.sort(va)]
    else:
        train_rows, val_rows = rows, rows[:0]
    parts = [Subset(CropCacheDataset(train_cache.crops, labels, train_tf), train_rows)]
    test_labels = np.full(len(test_cache), -1, dtype=np.int64)
    set_targets = False
    if cfg.data.pseudo_labels:
        try:
            pl_rows, pl_labels = read_pseudo_labels(cfg.data.pseudo_labels, test_cache.index, taxonomy)
        except (OSError, ValueError) as err:  # missing, a folder, binary, not CSV, wrong columns, ids or names
            raise PseudoLabelError(f"data.pseudo_labels {cfg.data.pseudo_labels}: {err}") from None
        set_targets = bool((pl_labels >= len(taxonomy)).any())
        pseudo = test_labels.copy()
        pseudo[pl_rows] = pl_labels
        parts.append(Subset(CropCacheDataset(test_cache.crops, pseudo, train_tf), pl_rows))
    val = {}
    if len(val_rows):
        val["val"] = Subset(CropCacheDataset(train_cache.crops, labels, eval_tf), val_rows)
        if cfg.data.shifted_val:
            factors = np.ones(len(labels), dtype=np.float32)
            factors[val_rows] = shifted_downscale_factors(_box_sizes(train_cache.index)[val_rows],
                                                          _box_sizes(test_cache.index),
                                                          crop_size=train_cache.sizes[0])  # view 0: the ROI
            val["shifted"] = Subset(CropCacheDataset(train_cache.crops, labels, eval_tf, downscale_factors=factors),
                                    val_rows)
    test = CropCacheDataset(test_cache.crops, test_labels, eval_tf)
    return Datasets(ConcatDataset(parts), val, val_rows, labels[val_rows], test, set_targets)


def _box_sizes(index: pd.DataFrame) -> np.ndarray:
    return np.maximum(index["box_w"], index["box_h"]).to_numpy()


@dataclass
class Loaders:
    """The shuffled training loader (its sampler under DDP, its generator), the batched augmentation of its
    batches (None: augmented per sample) and how evaluation loaders are made."""

    train: DataLoader
    sampler: DistributedSampler | None
    generator: torch.Generator
    eval_batch_size: int
    loader_args: dict
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    augment_generator: torch.Generator | None = None

    def eval(self, dataset: Dataset) -> DataLoader:
        """An in-order loader over `dataset` at the evaluation batch size."""
        return DataLoader(dataset, self.eval_batch_size, shuffle=False, **self.loader_args)


def build_loaders(cfg: Config, data: Datasets, rank: int, world: int, device: torch.device) -> Loaders:
    """DataLoaders of a run: a DistributedSampler shard per process when world > 1, seeded workers."""
    generator = torch.Generator()
    sampler = DistributedSampler(data.train, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    loader_args = dict(num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                       worker_init_fn=seed_worker)
    train = DataLoader(data.train, cfg.train.batch_size, shuffle=sampler is None, sampler=sampler,
                       drop_last=len(data.train) > cfg.train.batch_size * world, generator=generator, **loader_args)
    augment, augment_generator = None, None
    if cfg.augment.batched:
        augment_generator = torch.Generator()  # CPU: a seed draws the same augmentation on CPU and CUDA
        augment = partial(build_batch_augment(cfg.augment, cfg.data.input_sizes(), device,
                                              channels_last=cfg.model.channels_last), generator=augment_generator)
    return Loaders(train, sampler, generator, cfg.train.eval_batch_size or 2 * cfg.train.batch_size, loader_args,
                   augment, augment_generator)
