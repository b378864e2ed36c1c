"""Train one classifier: `from src.train import train; run_dir = train(config)`.

Reads the crop caches of data.root (train and test splits), holds out a frame-grouped validation split,
trains with the configured loss (mean over the H heads), validates every epoch, saves its weights every epoch
atomically, and at the end writes the test (and validation) probabilities and predictions. The run
folder output.dir/output.run_name holds:

    config.yaml        the resolved config            model.pt        weights of the last finished epoch
    checkpoint.pt      resumable: every train.full_checkpoint_every epochs and at the end (src.checkpoint)
    metrics.csv        one row per epoch              curves.png      loss / accuracy / distance
    test_probs.npz     annotation_id (N,), probs (H, N, C) softmax per head, classes (C,), image_id (N,) frames;
                       with train.tta_views beyond identity probs is the mean over the views, view_probs
                       (T, H, N, C) and views (T,) hold each; with model.avgk_head avgk_scores (N, C)
    predictions.csv    annotation_id,concept_name,confidence
    val_probs.npz, val_predictions.csv   the same for the validation split, plus labels (N,)
    done.json          written last: the run is complete; test metrics, the CPU/GPU model and package versions

Resumption (train.resume=true, from checkpoint.pt) is exact: every epoch reseeds all random streams from
(seed, epoch, rank), so an epoch's batches, augmentations and dropout do not depend on what ran before it.
Under torchrun each process trains on its shard (DistributedSampler); rank 0 validates and writes.
The pieces live in src.runtime (devices, seeding), src.checkpoint, src.data.training (caches, splits,
loaders), src.forward (prediction, artefacts), src.run_files (file names) and src.score (metrics).
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from src.artifacts import atomic_write_json, atomic_write_text, atomic_write_with, remove_stale_temps, run_lock
from src.checkpoint import CheckpointSaver, saved_checkpoints
from src.config import Config, config_to_yaml
from src.data.dataset import with_transform
from src.data.training import (
    Datasets,
    Loaders,
    build_datasets,
    build_loaders,
    check_data,
    check_missing_pixels,
    load_split,
)
from src.data.transforms import build_tta_transform
from src.forward import (
    ViewPredictions,
    amp_dtype,
    batch_to,
    predict_logits,
    predict_views,
    softmax_np,
    write_predictions,
)
from src.losses import TrainingLoss, build_loss, build_training_loss
from src.models import build_model
from src.plots import plot_training_curves
from src.run_files import CONFIG_FILE, CURVES_FILE, DONE_FILE, METRICS_FILE, WEIGHTS_FILE
from src.runtime import (
    Runtime,
    check_amp,
    epoch_seed,
    reseed_transforms,
    run_environment,
    seed_everything,
    setup_runtime,
)
from src.schedule import build_scheduler
from src.score import chance_metrics, classification_metrics, mean_distance, read_solution
from src.taxonomy import RANKS, Taxonomy, distance_matrix, load_taxonomy


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (`value` at `step`, 1-based, of the epoch)."""

    def __init__(self, message: str, value: float = math.nan, step: int = 0):
        super().__init__(message)
        self.value, self.step = value, step


def build_optimizer(model: nn.Module, o) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum) over the trainable parameters, from an OptimConfig (the frozen ones of
    model.frozen_blocks get no optimizer state)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "adamw":
        on_cuda = params[0].is_cuda  # the fused CUDA kernel: one launch for all parameters
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=on_cuda or None)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay)


def validation_due(epoch: int, t, stop: bool = False) -> bool:
    """Whether finished epoch `epoch` (1-based) is validated under TrainConfig t: every t.validate_every-th
    epoch, the run's last, and (stop) the last of this process."""
    return stop or epoch % t.validate_every == 0 or epoch >= t.epochs


def train_one_epoch(net: nn.Module, loader: DataLoader, loss_fn: TrainingLoss,
                    optimizer, scheduler, scaler, grad_clip: float | None, rt: Runtime, dtype, desc: str,
                    show: bool, augment=None, check_every: int = 50,
                    max_steps: int | None = None) -> tuple[float, int, float]:
    """One pass over the loader, lr stepped per batch. Returns (mean loss, images seen by all ranks, seconds).

    augment: the batched augmentation (uint8 batch on the device -> network input), None when the loader's
    items are already augmented. max_steps: stop the epoch after that many steps (train.max_steps).

    A NaN/inf loss (on any rank, so that every rank stops) raises TrainingDiverged naming the first step
    (1-based) where it went bad. The check makes no host-device sync per step: the first bad step and its
    loss stay on the device and are read every `check_every` steps and at the end of the epoch (the steps
    between run on, but nothing is saved before the check)."""
    net.train()
    started, seen, count = time.perf_counter(), 0, 0
    total = torch.zeros((), dtype=torch.float64, device=rt.device)      # sum of loss x batch size
    bad_step = torch.zeros((), dtype=torch.int64, device=rt.device)     # first step with a NaN/inf loss, 0: none
    bad_value = torch.zeros((), dtype=torch.float32, device=rt.device)  # its loss
    bar = tqdm(loader, desc=desc, disable=not show, leave=False)
    steps = len(loader) if hasattr(loader, "__len__") else None

    def check(step: int) -> None:  # one host read for `check_every` steps
        first = bad_step.clone()
        if rt.world > 1:  # the earliest bad step of any rank (0 = none, so it counts as the largest)
            first = torch.where(first == 0, torch.iinfo(torch.int64).max, first)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            first = torch.where(first == torch.iinfo(torch.int64).max, 0, first)
        if (k := int(first.item())):
            value = float(bad_value.item()) if int(bad_step.item()) == k else math.nan
            raise TrainingDiverged(f"loss is {value} at step {k}", value, k)
        if show:
            bar.set_postfix(loss=f"{float(total.item()) / max(1, count):.4f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}")

    step = -1
    for step, (x, y) in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            step -= 1  # the last step taken
            break
        x = batch_to(x, rt.device)
        y = y.to(rt.device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        with torch.autocast(rt.device.type, dtype=dtype) if dtype else nullcontext():
            out = net(x)
        loss = loss_fn.terms(out, y)
        value = loss.detach().float()
        first = (bad_step == 0) & ~torch.isfinite(value)  # on the device: no sync
        bad_step = torch.where(first, step + 1, bad_step)
        bad_value = torch.where(first, value, bad_value)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        seen += len(y) * rt.world
        total, count = total + value.double() * len(y), count + len(y)
        if (step + 1) % check_every == 0 and step + 1 != steps:
            check(step)
    check(step)
    if rt.world > 1:  # the mean over every rank's batches
        sums = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=rt.device)])
        dist.all_reduce(sums)
        return float(sums[0] / sums[1].clamp(min=1)), seen, time.perf_counter() - started
    return float(total.item()) / max(1, count), seen, time.perf_counter() - started


def validate(model: nn.Module, loader: DataLoader, labels: np.ndarray, loss_fn: nn.Module, D: np.ndarray,
             rank_labels: dict, device: torch.device, dtype) -> dict[str, float]:
    """Loss (the training loss, mean over heads) and `classification_metrics` of the head-mean probabilities."""
    logits = predict_logits(model, loader, device, dtype)
    with torch.no_grad():
        loss = float(loss_fn(torch.from_numpy(logits).to(device), torch.as_tensor(labels, device=device)))
    return {"loss": loss, **classification_metrics(softmax_np(logits).mean(axis=0), labels, D, rank_labels)}


def train(cfg: Config) -> Path:
    """Train (or resume) the run cfg describes; returns the run folder. See the module docstring.

    Rank 0 holds the run folder's lock (src.artifacts.run_lock) throughout: a second run of the same
    folder stops with RunLockedError (or waits, output.wait_for_lock); temporary files a killed run
    left in the folder are removed."""
    check_data(Path(cfg.data.root))
    rt = setup_runtime(cfg.train.device)  # DeviceError (before the run folder exists) when it is missing
    check_amp(cfg.train.amp, rt.device)
    run_dir = Path(cfg.output.dir) / cfg.output.run_name
    try:
        with run_lock(run_dir, cfg.output.wait_for_lock, advice="wait for it to finish (output.wait_for_lock=true "
                      "waits), or choose another output.run_name") if rt.main else nullcontext():
            if rt.main:
                remove_stale_temps(run_dir)
            return _train(cfg, rt)
    finally:
        if rt.owns_process_group:
            dist.destroy_process_group()


def _train(cfg: Config, rt: Runtime) -> Path:
    run_dir = Path(cfg.output.dir) / cfg.output.run_name
    if (run_dir / DONE_FILE).exists() and cfg.train.resume:
        print(f"{run_dir} is already complete (done.json)")
        return run_dir
    if saved_checkpoints(run_dir) and not cfg.train.resume:
        raise FileExistsError(f"{run_dir} already holds a run: pass train.resume=true to continue it, "
                              "or choose another output.run_name")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
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
    for warning in check_missing_pixels(cfg, train_cache, test_cache):
        if rt.main:
            print(warning, file=sys.stderr, flush=True)
    data = build_datasets(cfg, taxonomy, train_cache, test_cache)
    loaders = build_loaders(cfg, data, rt.rank, rt.world, rt.device)

    seed_everything(cfg.seed)
    aux_classes = {rank: len(taxonomy.rank_labels(rank)[1]) for rank in cfg.model.aux_ranks}
    model = build_model(cfg, len(classes), aux_classes).to(rt.device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_training_loss(cfg.loss, taxonomy, cfg.model.aux_ranks, model.num_features, cfg.model.avgk_head,
                                  data.set_targets, cfg.train.batch_size, cfg.seed,
                                  base=build_loss(cfg.loss, taxonomy)).to(rt.device)

    o = cfg.optim
    optimizer = build_optimizer(model, o)
    steps_per_epoch = len(loaders.train)
    scheduler = build_scheduler(optimizer, cfg.train.epochs * steps_per_epoch,
                                round(o.warmup_epochs * steps_per_epoch), o.min_lr)
    dtype = amp_dtype(cfg.train.amp, rt.device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    saver = CheckpointSaver(run_dir, model, optimizer, scheduler, scaler, loaders.generator,
                            cfg.model_dump(mode="json"), classes, cfg.train.full_checkpoint_every,
                            defaults=Config().model_dump(mode="json"))

    start_epoch, history, steps_done = 0, [], 0
    weights_epoch = saver.weights_epoch() if cfg.train.resume else None
    if cfg.train.resume and saver.exists():
        start_epoch, history = saver.resume()
        steps_done = history[-1].get("steps", start_epoch * steps_per_epoch) if history else 0
        if rt.main:
            print(f"resuming {run_dir} after epoch {start_epoch}")
            if weights_epoch and weights_epoch > start_epoch:
                print(f"  ({WEIGHTS_FILE} holds epoch {weights_epoch}, but only the full {saver.path.name} "
                      f"(epoch {start_epoch}) can be continued from: epochs {start_epoch + 1}-{weights_epoch} "
                      "are trained again; see train.full_checkpoint_every)")
    elif rt.main:
        if weights_epoch:
            print(f"{run_dir}: {WEIGHTS_FILE} holds epoch {weights_epoch} but there is no full {saver.path.name} "
                  "to continue from: training starts again from epoch 0 (see train.full_checkpoint_every)")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, config_to_yaml(cfg))

    net = model
    if cfg.train.compile:
        net = torch.compile(net)
    if rt.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    max_steps = cfg.train.max_steps
    if max_steps is not None and steps_done >= max_steps and start_epoch < cfg.train.epochs:
        if rt.main:
            print(f"{run_dir} has taken {steps_done} steps already (train.max_steps={max_steps}); "
                  "resume with a larger train.max_steps or null")
        return run_dir
    for epoch in range(start_epoch, cfg.train.epochs):
        # Every random stream of the epoch derives from (seed, epoch, rank): resumption is exact.
        seed = epoch_seed(cfg.seed, epoch, rt.rank)
        seed_everything(seed)
        loaders.generator.manual_seed(seed)
        if loaders.augment_generator is not None:
            loaders.augment_generator.manual_seed(seed + 2**31)  # a stream apart from the loader's (seeds < 2**31)
        reseed_transforms(data.train, seed)
        if loaders.sampler is not None:
            loaders.sampler.set_epoch(epoch)
        desc = f"epoch {epoch + 1}/{cfg.train.epochs}"
        try:
            train_loss, seen, elapsed = train_one_epoch(net, loaders.train, loss_fn,
                                                        optimizer, scheduler, scaler, o.grad_clip, rt, dtype, desc,
                                                        show, loaders.augment,
                                                        max_steps=None if max_steps is None else max_steps - steps_done)
        except TrainingDiverged as err:
            last_full = max(start_epoch, epoch - epoch % cfg.train.full_checkpoint_every)
            kept = f"the last good checkpoint is {saver.path} (after epoch {last_full})" if last_full else \
                "no checkpoint yet"
            raise TrainingDiverged(f"loss is {err.value} at {desc}, step {err.step} (global step "
                                   f"{epoch * steps_per_epoch + err.step}); {kept}; lower optim.lr or set "
                                   "optim.grad_clip", err.value, err.step) from None
        steps_done += min(steps_per_epoch, max_steps - steps_done) if max_steps is not None else steps_per_epoch
        stop = bool(cfg.train.max_epochs_this_run) and epoch + 1 - start_epoch >= cfg.train.max_epochs_this_run \
            and epoch + 1 < cfg.train.epochs
        step_stop = max_steps is not None and steps_done >= max_steps and epoch + 1 < cfg.train.epochs
        stop = stop or step_stop
        row = {"epoch": epoch + 1, "steps": steps_done, "lr": scheduler.get_last_lr()[0], "train_loss": train_loss,
               "epoch_seconds": elapsed, "train_img_per_s": seen / elapsed}
        validated = validation_due(epoch + 1, cfg.train, stop)
        if rt.main:
            for name, ds in data.val.items() if validated else ():
                metrics = validate(model, loaders.eval(ds), data.val_labels, loss_fn, D, rank_labels, rt.device,
                                   dtype)
                row.update({f"{name}_{k}": v for k, v in metrics.items()})
            history.append(row)
            saver.save(epoch + 1, history, last=stop or epoch + 1 == cfg.train.epochs)
            atomic_write_with(run_dir / METRICS_FILE, lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
            if validated:
                plot_training_curves(history, run_dir / CURVES_FILE)
            summary = ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                if k in ("train_loss", "val_loss", "val_accuracy", "val_distance", "train_img_per_s"))
            print(f"epoch {epoch + 1}/{cfg.train.epochs}: {summary}", flush=True)
        rt.barrier()
        if stop:
            if rt.main:
                why = f"{steps_done} steps (train.max_steps)" if step_stop else "train.max_epochs_this_run"
                print(f"stopping after {epoch + 1} epochs, {why}; continue with train.resume=true")
            return run_dir

    if rt.main:
        finish(cfg, run_dir, model, data, loaders, train_cache, test_cache, history, taxonomy, D, dtype, rt.device)
    rt.barrier()
    return run_dir


def finish(cfg: Config, run_dir: Path, model: nn.Module, data: Datasets, loaders: Loaders, train_cache, test_cache,
           history: list[dict], taxonomy: Taxonomy, D: np.ndarray, dtype, device) -> None:
    """Predict test (and validation) ROIs, write probabilities, predictions and done.json (last)."""
    classes = taxonomy.names
    done = {"run_dir": str(run_dir), "epochs": cfg.train.epochs, "classes": len(classes),
            "final": history[-1] if history else {},
            "test_missing_pixels": int((~test_cache.has_pixels).sum()),  # predicted from black crops
            "train_dropped": int(((train_cache.labels >= 0) & ~train_cache.good).sum()),
            **run_environment(device)}
    views, size = tuple(cfg.train.tta_views), cfg.data.input_sizes()

    def predict(dataset) -> ViewPredictions:  # every test-time view of the dataset's crops
        return predict_views(model, lambda view: loaders.eval(with_transform(dataset, build_tta_transform(size, view))),
                             views, device, dtype)

    test_ids = test_cache.index["annotation_id"].to_numpy()
    test = predict(data.test)
    pred = write_predictions(run_dir, "test", test_ids, test.probs, classes, D, cfg.output.decode,
                             extra={"image_id": test_cache.index["image_id"].to_numpy(np.int64), **test.npz_arrays()})
    if cfg.data.solution:
        truth = read_solution(cfg.data.solution, test_ids, taxonomy)
        done.update(test_n=len(truth), test_accuracy=float((truth == pred).mean()),
                    test_distance=mean_distance(truth, pred, D))
    if "val" in data.val:
        val = predict(data.val["val"])
        write_predictions(run_dir, "val", train_cache.index["annotation_id"].to_numpy()[data.val_rows], val.probs,
                          classes, D, cfg.output.decode, labels=data.val_labels,
                          extra={"image_id": train_cache.index["image_id"].to_numpy(np.int64)[data.val_rows],
                                 **val.npz_arrays()})
        done.update(chance_metrics(data.val_labels, D))
    atomic_write_json(run_dir / DONE_FILE, done)
    print(f"done: {run_dir}", flush=True)
