"""The team's recipe on one GPU, measured in one call: model step, heads, prediction, checkpoints, data loop.

    python -m bench.bench_gpu                                   # CUDA: the real recipe, about 5-8 minutes
    python -m bench.bench_gpu --device cpu --backbone wrn10_2 --image-size 32 --cache-size 32 --heads 4 \\
        --batches 8 --steps 2 --warmup 1 --crops 64 --workers 0 --loop-steps 2 --no-compile   # CPU smoke test

The model is the project's (src.models.build_model on cfg/wrn_dwce.yaml: wide_resnet101_2, 100 heads
2048 -> 2048 -> 79, DW-CE, AdamW), random weights (no download). Sections, each written to --out-json and
--out-md (atomically) as soon as it is measured, so a run cut short keeps what it measured:

  flops       FLOPs per image forward + backward (torch.utils.flop_counter), the FLOP-limited img/s at --peak-tflops
  model_step  synthetic batch: fp32 (TF32 allowed, as training sets) vs bf16 autocast, channels_last off/on,
              every --batches: train img/s and peak memory
  heads       the H heads batched vs a Python loop, forward + backward, fp32 and bf16
  predict     eval img/s (bf16, channels_last, softmax of every head copied to the host) and the derived
              time of --members members on --test-rois ROIs (weights-only load + prediction)
  checkpoint  src.checkpoint.CheckpointSaver's full checkpoint.pt (model + AdamW state, resumable) vs its
              weights-only model.pt: write seconds, size, load seconds; derived seconds per epoch for
              train.full_checkpoint_every 1, 5, 10
  loop        the training step fed from a uint8 cache of --crops random crops (cache size --cache-size):
              (a) today's path: DataLoader + albumentations per sample in --workers workers; (b) DataLoader of raw
              uint8 crops + batched augmentation on the GPU (src/data/gpu_augment.py); (c) the cache resident
              in GPU memory + GPU augmentation. Data-only and full img/s, GPU utilisation, which one limits.
  compile     torch.compile(model) with bf16 + channels_last, every --batches: compile seconds and img/s

Without CUDA and without --device cpu it stops with a message (exit status 2).
"""
from __future__ import annotations

import argparse
import gc
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_train import bench_heads
from bench.common import REPO, machine_info, timed
from src.artifacts import atomic_write_json, atomic_write_text
from src.config import Config, load_config
from src.losses import build_loss
from src.models import build_model
from src.taxonomy import load_taxonomy

SECTIONS = ("flops", "model_step", "heads", "predict", "checkpoint", "loop", "compile")
GIB = 2 ** 30


# ------------------------------------------------------------------------------------------- setup
def recipe_config(args) -> Config:
    """cfg/wrn_dwce.yaml with the benchmark's model size overrides and no weight download."""
    overrides = ["model.pretrained=false", f"model.backbone={args.backbone}", f"model.num_heads={args.heads}",
                 f"data.image_size={args.image_size}", f"data.cache_size={args.cache_size}"]
    if args.head_hidden is not None:
        overrides.append(f"model.head_hidden={args.head_hidden}")
    return load_config(Config, REPO / "cfg" / "wrn_dwce.yaml", overrides)


class Bench:
    """The model, loss and settings shared by the sections; one training step mirrors src/train.py's."""

    def __init__(self, args, deadline: float):
        self.args, self.deadline = args, deadline
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.cfg = recipe_config(args)
        self.taxonomy = load_taxonomy()
        torch.manual_seed(0)
        self.model = build_model(self.cfg, len(self.taxonomy.names)).to(self.device)
        self.loss_fn = build_loss(self.cfg.loss, self.taxonomy).to(self.device)
        self.size = args.image_size

    def seconds_left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def set_channels_last(self, on: bool) -> None:
        self.model.channels_last = on  # the Classifier converts its input batch when set
        self.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim  # as src.train.build_optimizer: AdamW, the fused kernel on CUDA
        return torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                 fused=self.cuda or None)

    def train_step(self, net, optimizer, dtype):
        """step(x, y) -> loss tensor: autocast forward, DW-CE over the heads, backward, AdamW step."""
        def step(x, y):
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                out = net(x)
            loss = self.loss_fn(out["logits"], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss
        return step

    def synthetic_batch(self, batch: int):
        x = torch.randn(batch, 1, 3, self.size, self.size, device=self.device)
        return x, torch.randint(0, len(self.taxonomy.names), (batch,), device=self.device)

    def reset_memory(self) -> None:
        self.model.zero_grad(set_to_none=True)
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / GIB if self.cuda else None

    def dtype(self, precision: str):
        return torch.bfloat16 if precision == "bf16" else None


def run_steps(step, batches, n_warmup: int, n_steps: int, sync, per_step=None) -> tuple[float, float]:
    """(seconds of n_steps timed steps, seconds of the n_warmup steps before them) of step(*next(batches))."""
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            loss = step(*next(batches))
            if per_step:
                per_step(loss)
        sync()
        return time.perf_counter() - start

    warm = run(n_warmup)
    return run(n_steps), warm


def repeat(*items):
    while True:
        yield items


def guarded(fn, catch_all: bool = False):
    """Run fn(); a CUDA out-of-memory error (any error with catch_all) becomes {'error': ...} instead of
    ending the run."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        error = "out of memory"
    except Exception as err:  # torch.compile can fail for reasons of the machine (compiler, Triton)
        if not catch_all:
            raise
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"error": error}


class UtilisationSampler:
    """Mean GPU utilisation (%) while the block runs, from NVML (torch.cuda.utilization) or nvidia-smi."""

    def __init__(self, enabled: bool, period: float = 0.2):
        self.enabled, self.period, self.samples = enabled, period, []
        self._stop = threading.Event()

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:  # no pynvml: ask nvidia-smi
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      f"--id={torch.cuda.current_device()}"], capture_output=True, text=True,
                                     timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            except Exception:
                return None

    def _run(self):
        while not self._stop.wait(self.period):
            value = self._read()
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


# ----------------------------------------------------------------------------------------- sections
def section_flops(b: Bench) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    b.set_channels_last(False)
    x, y = b.synthetic_batch(2)
    with FlopCounterMode(display=False) as counter:
        b.loss_fn(b.model(x)["logits"], y).backward()
    b.reset_memory()
    per_image = counter.get_total_flops() / 2
    limit = b.args.peak_tflops * 1e12 / per_image
    return {"gflop_per_image_fwd_bwd": per_image / 1e9, "peak_tflops_assumed": b.args.peak_tflops,
            "flop_limit_img_per_s": limit}


def section_model_step(b: Bench) -> list[dict]:
    rows = []
    precisions = ("fp32", "bf16") if b.cuda else ("fp32",)
    for precision in precisions:
        for channels_last in (False, True):
            b.set_channels_last(channels_last)
            for batch in b.args.batches:
                def measure():
                    b.reset_memory()
                    optimizer = b.optimizer()
                    step = b.train_step(b.model, optimizer, b.dtype(precision))
                    seconds, _ = run_steps(step, repeat(*b.synthetic_batch(batch)), b.args.warmup, b.args.steps,
                                           b.sync)
                    return {"img_per_s": batch * b.args.steps / seconds, "peak_gib": b.peak_gib()}

                row = {"precision": precision, "channels_last": channels_last, "compile": False, "batch": batch,
                       **guarded(measure)}
                rows.append(row)
                print(f"model step {precision} channels_last={channels_last} batch {batch}: {fmt_row(row)}",
                      flush=True)
    b.reset_memory()
    return rows


def section_heads(b: Bench) -> list[dict]:
    rows = []
    features = b.model.num_features
    hidden = b.model.heads.hidden
    dtypes = ((None, "fp32"), (torch.bfloat16, "bf16")) if b.cuda else ((None, "fp32"),)
    if hidden != features:
        print(f"heads: measuring F={features} with hidden width F (the recipe's); the model's is {hidden}")
    for dtype, name in dtypes:
        for batch in b.args.batches:
            r = guarded(lambda: bench_heads(features, b.args.heads, batch, max(3, b.args.steps), b.device, dtype))
            rows.append({"precision": name, **r, "B": batch})
            print(f"heads H={b.args.heads} F={features} batch {batch} {name}: {r}", flush=True)
            gc.collect()
    return rows


def section_predict(b: Bench) -> list[dict]:
    rows = []
    b.set_channels_last(True)
    b.model.eval()
    dtype = torch.bfloat16 if b.cuda else None
    for batch in b.args.batches:
        x, _ = b.synthetic_batch(batch)

        @torch.inference_mode()
        def predict():
            with torch.autocast(b.device.type, dtype=dtype, enabled=dtype is not None):
                logits = b.model(x)["logits"]
            return logits.float().softmax(-1).cpu()  # as src.train.predict_logits + softmax: to the host

        _, seconds = timed(predict, repeats=max(3, b.args.steps), warmup=b.args.warmup, sync=b.sync, stat="median")
        rows.append({"batch": batch, "img_per_s": batch / seconds})
        print(f"predict batch {batch}: {batch / seconds:.0f} img/s", flush=True)
    b.model.train()
    return rows


def section_checkpoint(b: Bench) -> dict:
    """The run folder's two files as src.checkpoint.CheckpointSaver writes them: checkpoint.pt (full) and
    model.pt (weights only)."""
    from src.checkpoint import CheckpointSaver
    from src.schedule import build_scheduler

    b.set_channels_last(True)
    b.reset_memory()
    optimizer = b.optimizer()
    b.train_step(b.model, optimizer, b.dtype("bf16" if b.cuda else "fp32"))(*b.synthetic_batch(b.args.batches[0]))
    scheduler = build_scheduler(optimizer, 100, 10, b.cfg.optim.min_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    out = {"note": "write = CheckpointSaver.save_full / save_weights (torch.save of the CUDA tensors to a local "
                   "file, atomically, no fsync, as training); load = torch.load right after writing (file in the "
                   "page cache)"}
    with tempfile.TemporaryDirectory(dir=b.args.ckpt_dir) as tmp:
        saver = CheckpointSaver(tmp, b.model, optimizer, scheduler, scaler, torch.Generator(),
                                b.cfg.model_dump(mode="json"), b.taxonomy.names)
        # the lambdas run inside the loop, before `del saver` below (ruff's F821 cannot tell)
        for name, write, path in (("full", lambda: saver.save_full(1, []), saver.path),  # noqa: F821
                                  ("weights_only", lambda: saver.save_weights(1), saver.weights_path)):  # noqa: F821
            _, write_s = timed(write)
            _, load_s = timed(lambda: torch.load(path, map_location=b.device, weights_only=True), sync=b.sync)
            out[name] = {"gb": path.stat().st_size / 1e9, "write_s": write_s, "load_to_device_s": load_s}
            print(f"checkpoint {name}: {fmt_row(out[name])}", flush=True)
            path.unlink()
    del saver, optimizer
    b.reset_memory()
    return out


def random_cache(n: int, size: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops (n, 1, size, size, 3) of noise and labels (n,), the shape of the real crop cache."""
    g = torch.Generator().manual_seed(seed)
    crops = torch.randint(0, 256, (n, 1, size, size, 3), dtype=torch.uint8, generator=g).numpy()
    return crops, torch.randint(0, classes, (n,), generator=g).numpy()


def section_loop(b: Bench, model_rows: list[dict]) -> list[dict]:
    from torch.utils.data import DataLoader

    from src.data.dataset import CropCacheDataset
    from src.data.gpu_augment import build_batch_augment, uint8_view
    from src.data.transforms import build_train_transform

    a, args = b.cfg.augment, b.args
    crops, labels = random_cache(args.crops, args.cache_size, len(b.taxonomy.names))
    cpu_transform = build_train_transform(b.size, rrc_scale=tuple(a.rrc_scale), hflip=a.hflip,
                                          color_jitter=a.color_jitter, pca_lighting=a.pca_lighting,
                                          downscale=a.downscale, downscale_p=a.downscale_p)
    gpu_augment = build_batch_augment(a, b.size, b.device, channels_last=True)
    workers = min(args.workers, os.cpu_count() or 1)
    precision = "bf16" if b.cuda else "fp32"
    b.set_channels_last(True)
    generator = torch.Generator().manual_seed(0)
    resident = None
    rows = []

    def loader_batches(transform, batch):
        loader = DataLoader(CropCacheDataset(crops, labels, transform), batch, shuffle=True, drop_last=True,
                            num_workers=workers, pin_memory=b.cuda, persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(0))
        while True:
            for x, y in loader:
                yield x.to(b.device, non_blocking=True), y.to(b.device, non_blocking=True)

    def resident_batches(batch):
        nonlocal resident
        if resident is None:
            resident = torch.from_numpy(crops).to(b.device), torch.from_numpy(labels).to(b.device)
        while True:
            idx = torch.randint(0, len(labels), (batch,), device=b.device)
            yield resident[0][idx], resident[1][idx]

    def augmented(batches):
        for x, y in batches:
            yield gpu_augment(x, generator), y

    paths = {"albumentations DataLoader (today)": lambda batch: loader_batches(cpu_transform, batch),
             "uint8 DataLoader + GPU augment": lambda batch: augmented(loader_batches(uint8_view, batch)),
             "GPU-resident cache + GPU augment": lambda batch: augmented(resident_batches(batch))}
    for batch in args.batches:
        model_only = next((r.get("img_per_s") for r in model_rows if r["precision"] == precision
                           and r["channels_last"] and r["batch"] == batch), None)
        for name, make in paths.items():
            def data_only():
                seconds, _ = run_steps(lambda x, y: None, make(batch), args.warmup, args.loop_steps, b.sync)
                return batch * args.loop_steps / seconds

            def full():
                b.reset_memory()
                optimizer = b.optimizer()
                step = b.train_step(b.model, optimizer, b.dtype(precision))
                with UtilisationSampler(b.cuda) as util:
                    # loss.item() every step, as the training loop does (it checks for NaN)
                    seconds, _ = run_steps(step, make(batch), args.warmup, args.loop_steps, b.sync,
                                           per_step=lambda loss: loss.item())
                return {"img_per_s": batch * args.loop_steps / seconds, "gpu_util_pct": util.mean,
                        "peak_gib": b.peak_gib()}

            data_rate = data_only()
            result = guarded(full)
            row = {"path": name, "batch": batch, "precision": precision, "workers": workers,
                   "data_only_img_per_s": data_rate, "model_only_img_per_s": model_only, **result}
            if model_only and "img_per_s" in result:
                row["limit"] = "data" if data_rate < model_only else "model"
            rows.append(row)
            print(f"loop {name} batch {batch}: {fmt_row(row)}", flush=True)
            gc.collect()  # ends the DataLoader workers of this path
    resident = None
    b.reset_memory()
    return rows


def section_compile(b: Bench) -> list[dict]:
    rows = []
    b.set_channels_last(True)
    precision = "bf16" if b.cuda else "fp32"
    net = torch.compile(b.model, dynamic=False)
    for batch in b.args.batches:
        if b.seconds_left() < b.args.compile_estimate_s:
            rows.append({"precision": precision, "channels_last": True, "compile": True, "batch": batch,
                         "error": "skipped: time budget"})
            print(f"compiled model step batch {batch}: skipped (time budget)", flush=True)
            continue

        def measure():
            b.reset_memory()
            optimizer = b.optimizer()
            step = b.train_step(net, optimizer, b.dtype(precision))
            seconds, warm = run_steps(step, repeat(*b.synthetic_batch(batch)), max(2, b.args.warmup), b.args.steps,
                                      b.sync)
            return {"img_per_s": batch * b.args.steps / seconds, "compile_and_warmup_s": warm,
                    "peak_gib": b.peak_gib()}

        row = {"precision": precision, "channels_last": True, "compile": True, "batch": batch,
               **guarded(measure, catch_all=True)}
        rows.append(row)
        print(f"compiled model step batch {batch}: {fmt_row(row)}", flush=True)
    b.reset_memory()
    return rows


# ------------------------------------------------------------------------------------------ report
def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}g}"


def fmt_row(row: dict) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in row.items() if k not in ("precision", "channels_last", "compile",
                                                                          "batch", "path"))


def markdown(r: dict) -> str:
    """The GPU section of bench/RESULTS.md from the results so far."""
    m = r["machine"]
    lines = [f"### GPU: {m.get('gpu') or r['device']}", "",
             f"Measured by `{r['command']}` on {m['date_utc']}; torch {m.get('torch')}, CUDA {r.get('cuda')}, "
             f"{m['cpu']} ({m['cores']} cores); git commit `{m['git_commit']}`. Model: `{r['model']}`, "
             f"{r['image_size']} px, random weights, DW-CE, AdamW (fused on CUDA)."]
    flops = r.get("flops")
    limit = flops["flop_limit_img_per_s"] if flops else None
    if flops:
        lines += ["", f"FLOPs per image, forward + backward (torch.utils.flop_counter): "
                      f"{flops['gflop_per_image_fwd_bwd']:.1f} GFLOP; at {flops['peak_tflops_assumed']:.0f} TFLOP/s "
                      f"that is a limit of {limit:,.0f} img/s (the ratios below are measured / this limit)."]
    steps = r.get("model_step", []) + r.get("compile", [])
    if steps:
        lines += ["", "Model step alone (synthetic batch, forward + backward + AdamW step):", "",
                  "| precision | channels_last | compile | batch | img/s | of FLOP limit | peak GiB | compile + warm-up s |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for s in steps:
            ratio = f"{s['img_per_s'] / limit:.1%}" if limit and "img_per_s" in s else "-"
            lines.append(f"| {s['precision']} | {s['channels_last']} | {s['compile']} | {s['batch']} | "
                         f"{fmt(s.get('img_per_s', s.get('error')))} | {ratio} | {fmt(s.get('peak_gib'))} | "
                         f"{fmt(s.get('compile_and_warmup_s'))} |")
    if r.get("heads"):
        lines += ["", "Heads alone, forward + backward (ms):", "", "| precision | heads | F | batch | batched | loop | "
                  "loop / batched |", "|---|---:|---:|---:|---:|---:|---:|"]
        for h in r["heads"]:
            lines.append(f"| {h['precision']} | {h.get('H', '-')} | {h.get('F', '-')} | {h['B']} | "
                         f"{fmt(h.get('batched_ms', h.get('error')))} | {fmt(h.get('loop_ms'))} | "
                         f"{fmt(h.get('loop_over_batched'))} |")
    if r.get("predict"):
        lines += ["", "Prediction (eval, bf16 on CUDA, channels_last, every head's softmax to the host; one view per "
                  "crop, as src/predict.py): " + ", ".join(f"batch {p['batch']}: {fmt(p['img_per_s'])} img/s"
                                                             for p in r["predict"]) + "."]
    ck = r.get("checkpoint")
    if ck:
        lines += ["", f"Checkpoints ({ck['note']}):", "", "| kind | size GB | write s | load to device s |",
                  "|---|---:|---:|---:|"]
        for kind in ("full", "weights_only"):
            c = ck[kind]
            lines.append(f"| {kind} | {c['gb']:.2f} | {fmt(c['write_s'])} | {fmt(c['load_to_device_s'])} |")
        w, f = ck["weights_only"]["write_s"], ck["full"]["write_s"]
        lines += ["", "Derived: checkpoint writing per epoch (model.pt every epoch + checkpoint.pt every N): "
                      + ", ".join(f"train.full_checkpoint_every={n}: {w + f / n:.2g} s" for n in (1, 5, 10)) + "."]
    if r.get("predict") and ck:
        best = max(p["img_per_s"] for p in r["predict"])
        members, rois = r["members"], r["test_rois"]
        seconds = members * (ck["weights_only"]["load_to_device_s"] + rois / best)
        lines += ["", f"Derived, not measured as a whole: predicting {rois} test ROIs with {members} members "
                      f"(weights-only load + prediction each) takes about {seconds:.0f} s on this device."]
    if r.get("loop"):
        lines += ["", f"Training loop fed from a uint8 cache of {r['crops']:,} random crops of {r['cache_size']} px "
                      f"(steps timed after warm-up; loss.item() every step as in training):", "",
                  "| data path | batch | workers | data only img/s | model only img/s | full loop img/s | "
                  "GPU util % | limit |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in r["loop"]:
            lines.append(f"| {row['path']} | {row['batch']} | {row['workers']} | {fmt(row['data_only_img_per_s'])} | "
                         f"{fmt(row['model_only_img_per_s'])} | {fmt(row.get('img_per_s', row.get('error')))} | "
                         f"{fmt(row.get('gpu_util_pct'))} | {row.get('limit', '-')} |")
    lines += ["", *targets(r)]
    return "\n".join(lines) + "\n"


def targets(r: dict) -> list[str]:
    """The issue's targets against the best measured figures, and the derived pipeline cost."""
    out = []
    bf16 = [s["img_per_s"] for s in r.get("model_step", []) + r.get("compile", [])
            if s["precision"] == "bf16" and "img_per_s" in s]
    loops = [row["img_per_s"] for row in r.get("loop", []) if "img_per_s" in row]
    limit = r.get("flops", {}).get("flop_limit_img_per_s")
    if bf16:
        best = max(bf16)
        out.append(f"- Model step alone, best bf16: {best:,.0f} img/s (target >= 8,000: "
                   f"{'met' if best >= 8000 else 'not met'})" + (f"; {best / limit:.1%} of the FLOP limit." if limit
                                                                 else "."))
    if loops:
        best = max(loops)
        images = r["members"] * r["trainings"] * r["epochs"] * r["real_crops"]
        out.append(f"- Training loop end to end, best: {best:,.0f} img/s (target >= 5,000: "
                   f"{'met' if best >= 5000 else 'not met'}). Derived: {r['members']} members x {r['trainings']} "
                   f"trainings x {r['epochs']} epochs x {r['real_crops']:,} crops = {images / 1e6:.0f} M images, "
                   f"{images / best / 3600:.1f} GPU-hours at that rate.")
    return out


def write_outputs(r: dict, json_path: Path, md_path: Path) -> None:
    atomic_write_json(json_path, r)
    atomic_write_text(md_path, markdown(r))


# -------------------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test with tiny sizes)")
    p.add_argument("--backbone", default="wide_resnet101_2", help="timm name (default the recipe's)")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--cache-size", type=int, default=128, help="cached crop size fed to the augmentation")
    p.add_argument("--heads", type=int, default=100)
    p.add_argument("--head-hidden", type=int, default=None, help="head hidden width (default: feature width)")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps", type=int, default=20, help="timed steps per model-step measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    p.add_argument("--loop-steps", type=int, default=60, help="timed steps per training-loop measurement")
    p.add_argument("--crops", type=int, default=23699, help="crops in the random uint8 cache (the real count)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers (the recipe's data.num_workers)")
    p.add_argument("--peak-tflops", type=float, default=800.0, help="dense bf16 peak of the GPU (H100: ~800 usable)")
    p.add_argument("--members", type=int, default=8, help="ensemble members (pipeline cost, Kaggle estimate)")
    p.add_argument("--trainings", type=int, default=22, help="trainings per member (1 + 21 self-training rounds)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--real-crops", type=int, default=23699, help="training crops of the real data")
    p.add_argument("--test-rois", type=int, default=788)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    p.add_argument("--budget-s", type=float, default=540, help="skip sections that start after this many seconds")
    p.add_argument("--compile-estimate-s", type=float, default=150,
                   help="skip a compiled measurement when less than this is left of the budget")
    p.add_argument("--ckpt-dir", default=None, help="folder for the temporary checkpoints (default: system temp)")
    p.add_argument("--out-json", type=Path, default=None,
                   help="default bench/results_gpu.json on CUDA, outputs/bench/results_gpu_<device>.json otherwise")
    p.add_argument("--out-md", type=Path, default=None, help="the markdown section (default beside --out-json, .md)")
    return p.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    deadline = time.perf_counter() + args.budget_s
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available on this machine, nothing measured. Run it on a GPU machine, or "
              "smoke-test it on the CPU with tiny sizes: python -m bench.bench_gpu --device cpu --backbone wrn10_2 "
              "--image-size 32 --cache-size 32 --heads 4 --batches 8 --steps 2 --crops 64 --workers 0 --no-compile",
              file=sys.stderr)
        raise SystemExit(2)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as src/train.py on CUDA
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    json_path = args.out_json or (REPO / "bench" / "results_gpu.json" if device.type == "cuda"
                                  else REPO / "outputs" / "bench" / f"results_gpu_{device.type}.json")
    md_path = args.out_md or json_path.with_suffix(".md")
    b = Bench(args, deadline)
    r = {"command": "python -m bench.bench_gpu " + shlex.join(argv if argv is not None else sys.argv[1:]),
         "machine": machine_info(), "device": str(device), "cuda": torch.version.cuda if b.cuda else None,
         "model": args.backbone, "num_heads": args.heads, "image_size": args.image_size, "cache_size": args.cache_size,
         "crops": args.crops, "members": args.members, "trainings": args.trainings, "epochs": args.epochs,
         "real_crops": args.real_crops, "test_rois": args.test_rois, "skipped": []}
    sections = [s for s in args.sections if not (s == "compile" and args.no_compile)]
    for name in sections:
        if b.seconds_left() <= 0:
            r["skipped"].append(name)
            print(f"== {name}: skipped (time budget of {args.budget_s:.0f} s spent)", flush=True)
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        if name == "flops":
            r["flops"] = section_flops(b)
        elif name == "model_step":
            r["model_step"] = section_model_step(b)
        elif name == "heads":
            r["heads"] = section_heads(b)
        elif name == "predict":
            r["predict"] = section_predict(b)
        elif name == "checkpoint":
            r["checkpoint"] = section_checkpoint(b)
        elif name == "loop":
            r["loop"] = section_loop(b, r.get("model_step", []))
        elif name == "compile":
            r["compile"] = section_compile(b)
        r.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
        write_outputs(r, json_path, md_path)
    r["total_seconds"] = args.budget_s - b.seconds_left()
    write_outputs(r, json_path, md_path)
    print(markdown(r))
    print(f"wrote {json_path} and {md_path}")
    return r


if __name__ == "__main__":
    main()
