"""Train one classifier: `from src.train import train; run_dir = train(config)`.

Reads the crop caches of data.root (train and test splits), holds out a frame-grouped validation split,
trains with the configured loss (mean over the H heads), validates every epoch, checkpoints every epoch
atomically, and at the end writes the test (and validation) probabilities and predictions. The run
folder output.dir/output.run_name holds:

    config.yaml        the resolved config            checkpoint.pt   last finished epoch (resumable)
    metrics.csv        one row per epoch              curves.png      loss / accuracy / distance
    test_probs.npz     annotation_id (N,), probs (H, N, C) softmax per head, classes (C,)
    predictions.csv    annotation_id,concept_name,confidence
    val_probs.npz, val_predictions.csv   the same for the validation split, plus labels (N,)
    done.json          written last: the run is complete

Resumption (train.resume=true) is exact: every epoch reseeds all random streams from (seed, epoch, rank),
so an epoch's batches, augmentations and dropout do not depend on what ran before it.
Under torchrun each process trains on its shard (DistributedSampler); rank 0 validates and writes.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from src.artifacts import atomic_save_npz, atomic_write_json, atomic_write_text, atomic_write_with
from src.config import Config, config_to_yaml
from src.ensemble import decode_bayes
from src.losses import build_loss
from src.models import build_model
from src.schedule import build_scheduler
from src.taxonomy import RANKS, Taxonomy, distance_matrix, load_taxonomy

# Keys that may change between a run and its resumption without changing the result.
RESUMABLE_KEYS = ("train.resume", "train.max_epochs_this_run", "train.progress", "data.num_workers")


class DataMissingError(FileNotFoundError):
    """The dataset folder lacks the files training needs; the message gives the commands that make them."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------------
# data

def check_data(root: Path) -> None:
    """Stop at once, with the commands that fetch or generate the data, when root is incomplete."""
    needed = [root / "dataset_train.json", root / "dataset_test.json", root / "train" / "images",
              root / "test" / "images"]
    missing = [str(p) for p in needed if not p.exists()]
    if not missing:
        return
    if "synthetic" in root.parts:
        make = (f"  python -m src.data.synthetic --out {root} --preset demo --seed 0\n"
                f"  python -m src.data.download {root}/dataset_train.json {root}/train\n"
                f"  python -m src.data.download {root}/dataset_test.json {root}/test")
    else:
        make = (f"  python -m src.data.fetch --competition fathomnet-2025 --out {root}\n"
                f"  python -m src.data.download {root}/dataset_train.json {root}/train\n"
                f"  python -m src.data.download {root}/dataset_test.json {root}/test\n"
                f"(no Kaggle access? cfg/demo_*.yaml train on the generated benchmark in inputs/synthetic/demo)")
    raise DataMissingError(f"data missing under {root}: {', '.join(missing)}.\nMake it with:\n{make}")


def load_split(cfg: Config, taxonomy: Taxonomy, split: str, progress: bool = True):
    """The CropCache (crops (N, V, S, S, 3) uint8, index DataFrame) of ROOT/dataset_<split>.json."""
    from src.data.cache import load_or_build_crop_cache
    root = Path(cfg.data.root)
    return load_or_build_crop_cache(root / f"dataset_{split}.json", root / split / "images", root / "cache",
                                    cfg.data.cache_size or cfg.data.image_size, views=tuple(cfg.data.views),
                                    taxonomy=taxonomy, progress=progress)


def read_pseudo_labels(path: str | Path, test_index: pd.DataFrame, taxonomy: Taxonomy) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the test cache named in a CSV annotation_id,concept_name, and their class indices."""
    table = pd.read_csv(path)
    if not {"annotation_id", "concept_name"} <= set(table.columns):
        raise ValueError(f"{path}: needs columns annotation_id,concept_name, has {list(table.columns)}")
    labels = taxonomy.indices(table["concept_name"])
    if (labels < 0).any():
        raise ValueError(f"{path}: unknown concept names {sorted(set(table.concept_name[labels < 0]))[:5]}")
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
    test: Dataset


def build_datasets(cfg: Config, taxonomy: Taxonomy, train_cache, test_cache) -> Datasets:
    """Frame-grouped split, pseudo-labelled test rows added to training, train / eval transforms."""
    from src.data.dataset import CropCacheDataset
    from src.data.splits import frame_grouped_split, shifted_downscale_factors
    from src.data.transforms import build_eval_transform, build_train_transform

    a = cfg.augment
    size = cfg.data.image_size
    train_tf = build_train_transform(size, rrc_scale=tuple(a.rrc_scale), hflip=a.hflip, color_jitter=a.color_jitter,
                                     pca_lighting=a.pca_lighting, downscale=a.downscale, downscale_p=a.downscale_p)
    eval_tf = build_eval_transform(size)
    labels = train_cache.index["label"].to_numpy().astype(np.int64)
    # Rows the cache flags (frame missing, bad box) keep their place but are not trained on.
    problem = train_cache.index.get("problem", pd.Series("", index=train_cache.index.index))
    rows = np.flatnonzero((labels >= 0) & (problem.fillna("").astype(str) == "").to_numpy())
    if cfg.data.val_fraction > 0:
        tr, va = frame_grouped_split(labels[rows], train_cache.index["image_id"].to_numpy()[rows],
                                     cfg.data.val_fraction,
                                     cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed)
        train_rows, val_rows = rows[np.sort(tr)], rows[np.sort(va)]
    else:
        train_rows, val_rows = rows, rows[:0]
    parts = [Subset(CropCacheDataset(train_cache.crops, labels, train_tf), train_rows)]
    test_labels = np.full(len(test_cache.index), -1, dtype=np.int64)
    if cfg.data.pseudo_labels:
        pl_rows, pl_labels = read_pseudo_labels(cfg.data.pseudo_labels, test_cache.index, taxonomy)
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
                                                          crop_size=train_cache.crops.shape[2])
            val["shifted"] = Subset(CropCacheDataset(train_cache.crops, labels, eval_tf, downscale_factors=factors),
                                    val_rows)
    test = CropCacheDataset(test_cache.crops, test_labels, eval_tf)
    return Datasets(ConcatDataset(parts), val, val_rows, test)


def _box_sizes(index: pd.DataFrame) -> np.ndarray:
    return np.maximum(index["box_w"], index["box_h"]).to_numpy()


def _reseed_transforms(dataset, seed: int) -> None:
    """Reseed the (albumentations) transforms inside a dataset tree; they keep their own generators."""
    if isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            _reseed_transforms(part, seed)
    elif isinstance(dataset, Subset):
        _reseed_transforms(dataset.dataset, seed)
    else:
        transform = getattr(dataset, "transform", None)
        transform = getattr(transform, "compose", transform)  # TrainTransform wraps an A.Compose
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive every random stream of the worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    _reseed_transforms(torch.utils.data.get_worker_info().dataset, seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**31


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# metrics (pure functions: arrays in, numbers out)

def classification_metrics(probs: np.ndarray, labels: np.ndarray, D: np.ndarray,
                           rank_labels: dict[str, np.ndarray]) -> dict[str, float]:
    """accuracy, mean distance (argmax and Bayes decoding), per-rank accuracy of probs (N, C) vs labels (N,).

    Per-rank accuracy: predicted and true concepts share the ancestor at that rank, over the samples
    whose true concept has that rank set."""
    pred = probs.argmax(axis=1)
    out = {"accuracy": float((pred == labels).mean()),
           "distance": float(D[labels, pred].mean()),
           "distance_bayes": float(D[labels, decode_bayes(probs, D)].mean())}
    for rank, table in rank_labels.items():
        truth = table[labels]
        known = truth >= 0
        out[f"acc_{rank}"] = float((table[pred][known] == truth[known]).mean()) if known.any() else float("nan")
    return out


def chance_metrics(labels: np.ndarray, D: np.ndarray) -> dict[str, float]:
    """What guessing scores on these labels: uniform random guess, and the best constant label."""
    return {"chance_accuracy": 1.0 / len(D),
            "chance_distance": float(D[labels].mean()),
            "best_constant_distance": float(D[labels].mean(axis=0).min())}


# ----------------------------------------------------------------------------------------------------
# distributed / device helpers

@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device
    owns_process_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_runtime(device: str) -> Runtime:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device == "auto" or device == "cuda":
        dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    else:
        dev = torch.device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Runtime(rank, world, dev, owns)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _rng_states(generator: torch.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loader": generator.get_state()}


def _set_rng_states(states: dict, generator: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["loader"])


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two config dicts (ignoring RESUMABLE_KEYS)."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b) if k not in RESUMABLE_KEYS and a.get(k) != b.get(k))


# ----------------------------------------------------------------------------------------------------
# one epoch, prediction

def compute_loss(out: dict, y: torch.Tensor, loss_fn: nn.Module, aux_targets: dict[str, torch.Tensor],
                 aux_weight: float) -> torch.Tensor:
    """Main loss (mean over heads) + aux_weight * CE of each rank head on the true concept's ancestor."""
    loss = loss_fn(out["logits"], y)
    for rank, logits in out["aux"].items():
        target = aux_targets[rank][y]
        known = target >= 0  # concepts above this rank have no ancestor there
        ce = F.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")
        loss = loss + aux_weight * (ce * known).sum() / known.sum().clamp(min=1)
    return loss


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, dtype) -> np.ndarray:
    """Logits (H, N, C) float32 of every item of the loader, in order."""
    model.eval()
    chunks = []
    for x, _ in loader:
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            chunks.append(model(x.to(device, non_blocking=True))["logits"].float().cpu())
    return torch.cat(chunks, dim=1).numpy()


def softmax_np(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(logits).softmax(dim=-1).numpy().astype(np.float32)


def write_predictions(run_dir: Path, stem: str, annotation_ids: np.ndarray, probs: np.ndarray,
                      classes: tuple[str, ...], D: np.ndarray, decode: str, labels: np.ndarray | None = None):
    """<stem>_probs.npz (probs (H, N, C) per head) and the predictions CSV of the head-mean."""
    arrays = {"annotation_id": annotation_ids.astype(np.int64), "probs": probs, "classes": np.array(classes)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    atomic_save_npz(run_dir / f"{stem}_probs.npz", **arrays)
    mean = probs.mean(axis=0)
    pred = decode_bayes(mean, D) if decode == "bayes" else mean.argmax(axis=1)
    table = pd.DataFrame({"annotation_id": annotation_ids.astype(np.int64),
                          "concept_name": np.array(classes)[pred],
                          "confidence": mean[np.arange(len(pred)), pred]})
    name = "predictions.csv" if stem == "test" else f"{stem}_predictions.csv"
    atomic_write_with(run_dir / name, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    return pred


def score_against_solution(path: str | Path, annotation_ids: np.ndarray, pred: np.ndarray,
                           taxonomy: Taxonomy, D: np.ndarray) -> dict[str, float]:
    """Mean distance and accuracy of predicted class indices vs a CSV annotation_id,concept_name."""
    solution = pd.read_csv(path)
    name_col = "concept_name" if "concept_name" in solution.columns else solution.columns[-1]
    truth = pd.Series(taxonomy.indices(solution[name_col]), index=solution["annotation_id"].to_numpy())
    keep = np.isin(annotation_ids, truth.index)
    t = truth[annotation_ids[keep]].to_numpy()
    p = pred[keep]
    return {"test_n": int(keep.sum()), "test_accuracy": float((t == p).mean()),
            "test_distance": float(D[t, p].mean())}


def build_optimizer(model: nn.Module, o) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum) over all parameters, from an OptimConfig."""
    if o.name == "adamw":
        on_cuda = next(model.parameters()).is_cuda  # the fused CUDA kernel: one launch for all parameters
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=on_cuda or None)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True,
                           weight_decay=o.weight_decay)


def train_one_epoch(net: nn.Module, loader: DataLoader, loss_fn: nn.Module, aux_targets: dict, aux_weight: float,
                    optimizer, scheduler, scaler, grad_clip: float | None, rt: Runtime, dtype, desc: str,
                    step0: int, kept: str, show: bool) -> tuple[float, int, float]:
    """One pass over the loader, lr stepped per batch. Returns (mean loss, images seen by all ranks, seconds).

    A NaN/inf loss (averaged over ranks, so that every rank stops) raises TrainingDiverged naming the step."""
    net.train()
    started, seen, total, count = time.perf_counter(), 0, 0.0, 0
    bar = tqdm(loader, desc=desc, disable=not show, leave=False)
    for step, (x, y) in enumerate(bar):
        x = x.to(rt.device, non_blocking=True)
        y = y.to(rt.device, non_blocking=True)
        with torch.autocast(rt.device.type, dtype=dtype) if dtype else nullcontext():
            out = net(x)
        loss = compute_loss(out, y, loss_fn, aux_targets, aux_weight)
        value = loss.detach().clone()
        if rt.world > 1:
            dist.all_reduce(value)
            value /= rt.world
        value = value.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss is {value} at {desc}, step {step + 1} (global step "
                                   f"{step0 + step + 1}); {kept}; lower optim.lr or set optim.grad_clip")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        seen += len(y) * rt.world
        total, count = total + value * len(y), count + len(y)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return total / max(1, count), seen, time.perf_counter() - started


def validate(model: nn.Module, loader: DataLoader, labels: np.ndarray, loss_fn: nn.Module, D: np.ndarray,
             rank_labels: dict, device: torch.device, dtype) -> dict[str, float]:
    """Loss (the training loss, mean over heads) and `classification_metrics` of the head-mean probabilities."""
    logits = predict_logits(model, loader, device, dtype)
    with torch.no_grad():
        loss = float(loss_fn(torch.from_numpy(logits).to(device), torch.as_tensor(labels, device=device)))
    return {"loss": loss, **classification_metrics(softmax_np(logits).mean(axis=0), labels, D, rank_labels)}


def plot_curves(history: list[dict], path: Path) -> None:
    """curves.png: loss, accuracy and mean distance per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("loss", ["train_loss", "val_loss", "shifted_loss"]),
              ("accuracy", ["val_accuracy", "shifted_accuracy"]),
              ("mean distance", ["val_distance", "val_distance_bayes", "shifted_distance"])]
    for ax, (title, columns) in zip(axes, panels):
        for column in columns:
            if column in frame:
                ax.plot(frame["epoch"], frame[column], marker="o", ms=3, label=column)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# the run

def train(cfg: Config) -> Path:
    """Train (or resume) the run cfg describes; returns the run folder. See the module docstring."""
    rt = setup_runtime(cfg.train.device)
    try:
        return _train(cfg, rt)
    finally:
        if rt.owns_process_group:
            dist.destroy_process_group()


def _train(cfg: Config, rt: Runtime) -> Path:
    run_dir = Path(cfg.output.dir) / cfg.output.run_name
    ckpt_path = run_dir / "checkpoint.pt"
    if (run_dir / "done.json").exists() and cfg.train.resume:
        print(f"{run_dir} is already complete (done.json)")
        return run_dir
    if ckpt_path.exists() and not cfg.train.resume:
        raise FileExistsError(f"{run_dir} already holds a run: pass train.resume=true to continue it, "
                              "or choose another output.run_name")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    check_data(Path(cfg.data.root))
    show = cfg.train.progress and rt.main

    taxonomy = load_taxonomy()
    classes = taxonomy.names
    D = distance_matrix(taxonomy)
    rank_labels = {rank: taxonomy.rank_labels(rank)[0] for rank in RANKS[1:6]}

    # Rank 0 builds the crop caches first so that the processes do not race to write them.
    if not rt.main:
        rt.barrier()
    train_cache = load_split(cfg, taxonomy, "train", progress=show)
    test_cache = load_split(cfg, taxonomy, "test", progress=show)
    if rt.main:
        rt.barrier()
    data = build_datasets(cfg, taxonomy, train_cache, test_cache)

    generator = torch.Generator()
    sampler = DistributedSampler(data.train, rt.world, rt.rank, shuffle=True, seed=cfg.seed) if rt.world > 1 else None
    workers = cfg.data.num_workers
    loader_args = dict(num_workers=workers, pin_memory=rt.device.type == "cuda", worker_init_fn=_seed_worker)
    train_loader = DataLoader(data.train, cfg.train.batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=len(data.train) > cfg.train.batch_size * rt.world, generator=generator,
                              **loader_args)
    eval_bs = cfg.train.eval_batch_size or 2 * cfg.train.batch_size

    def eval_loader(ds: Dataset) -> DataLoader:
        return DataLoader(ds, eval_bs, shuffle=False, **loader_args)

    seed_everything(cfg.seed)
    aux_classes = {rank: len(taxonomy.rank_labels(rank)[1]) for rank in cfg.model.aux_ranks}
    model = build_model(cfg, len(classes), aux_classes).to(rt.device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    aux_targets = {r: torch.as_tensor(taxonomy.rank_labels(r)[0], device=rt.device) for r in cfg.model.aux_ranks}
    loss_fn = build_loss(cfg.loss, taxonomy).to(rt.device)

    o = cfg.optim
    optimizer = build_optimizer(model, o)
    steps_per_epoch = len(train_loader)
    scheduler = build_scheduler(optimizer, cfg.train.epochs * steps_per_epoch,
                                round(o.warmup_epochs * steps_per_epoch), o.min_lr)
    dtype = amp_dtype(cfg.train.amp, rt.device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    start_epoch, history = 0, []
    if cfg.train.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        changed = config_differences(state["config"], cfg.model_dump(mode="json"))
        if changed:
            raise ValueError(f"{ckpt_path}: the config differs from the checkpoint's in {changed}; "
                             "resume with the same config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_states(state["rng"], generator)
        start_epoch, history = state["epoch"], state["history"]
        if rt.main:
            print(f"resuming {run_dir} after epoch {start_epoch}")
    elif rt.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))

    net = model
    if cfg.train.compile:
        net = torch.compile(net)
    if rt.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    for epoch in range(start_epoch, cfg.train.epochs):
        # Every random stream of the epoch derives from (seed, epoch, rank): resumption is exact.
        seed = epoch_seed(cfg.seed, epoch, rt.rank)
        seed_everything(seed)
        generator.manual_seed(seed)
        _reseed_transforms(data.train, seed)
        if sampler is not None:
            sampler.set_epoch(epoch)
        desc = f"epoch {epoch + 1}/{cfg.train.epochs}"
        step0 = epoch * steps_per_epoch
        kept = f"the last good checkpoint is {ckpt_path} (after epoch {epoch})" if epoch else "no checkpoint yet"
        train_loss, seen, elapsed = train_one_epoch(net, train_loader, loss_fn, aux_targets, cfg.loss.aux_weight,
                                                    optimizer, scheduler, scaler, o.grad_clip, rt, dtype, desc,
                                                    step0, kept, show)
        row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "train_loss": train_loss,
               "epoch_seconds": elapsed, "train_img_per_s": seen / elapsed}
        if rt.main:
            val_labels = train_cache.index["label"].to_numpy()[data.val_rows]
            for name, ds in data.val.items():
                metrics = validate(model, eval_loader(ds), val_labels, loss_fn, D, rank_labels, rt.device, dtype)
                row.update({f"{name}_{k}": v for k, v in metrics.items()})
            history.append(row)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                     "history": history, "rng": _rng_states(generator), "config": cfg.model_dump(mode="json"),
                     "classes": list(classes)}
            atomic_write_with(ckpt_path, lambda tmp: torch.save(state, tmp))
            atomic_write_with(run_dir / "metrics.csv", lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
            plot_curves(history, run_dir / "curves.png")
            summary = ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                if k in ("train_loss", "val_loss", "val_accuracy", "val_distance", "train_img_per_s"))
            print(f"epoch {epoch + 1}/{cfg.train.epochs}: {summary}", flush=True)
        rt.barrier()
        if cfg.train.max_epochs_this_run and epoch + 1 - start_epoch >= cfg.train.max_epochs_this_run \
                and epoch + 1 < cfg.train.epochs:
            if rt.main:
                print(f"stopping after {epoch + 1} epochs (train.max_epochs_this_run); "
                      "continue with train.resume=true")
            return run_dir

    if rt.main:
        finish(cfg, run_dir, model, data, train_cache, test_cache, history, taxonomy, D, dtype, rt.device, eval_loader)
    rt.barrier()
    return run_dir


def finish(cfg: Config, run_dir: Path, model: nn.Module, data: Datasets, train_cache, test_cache,
           history: list[dict], taxonomy: Taxonomy, D: np.ndarray, dtype, device, eval_loader) -> None:
    """Predict test (and validation) ROIs, write probabilities, predictions and done.json (last)."""
    classes = taxonomy.names
    done = {"run_dir": str(run_dir), "epochs": cfg.train.epochs, "classes": len(classes),
            "final": history[-1] if history else {}}
    test_ids = test_cache.index["annotation_id"].to_numpy()
    test_probs = softmax_np(predict_logits(model, eval_loader(data.test), device, dtype))
    pred = write_predictions(run_dir, "test", test_ids, test_probs, classes, D, cfg.output.decode)
    if cfg.data.solution:
        done.update(score_against_solution(cfg.data.solution, test_ids, pred, taxonomy, D))
    if "val" in data.val:
        labels = train_cache.index["label"].to_numpy()[data.val_rows]
        val_probs = softmax_np(predict_logits(model, eval_loader(data.val["val"]), device, dtype))
        write_predictions(run_dir, "val", train_cache.index["annotation_id"].to_numpy()[data.val_rows], val_probs,
                          classes, D, cfg.output.decode, labels=labels)
        done.update(chance_metrics(labels, D))
    atomic_write_json(run_dir / "done.json", done)
    print(f"done: {run_dir}", flush=True)
