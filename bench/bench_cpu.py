"""Where a CPU training epoch's time goes, what the model step reaches against the cores' peak, and what each
speed option buys end to end.

    python -m bench.bench_cpu [--root inputs/synthetic/demo] [--recipes demo reference] [--views roi roi,ctx3]
                              [--epochs 2] [--threads 2] [--options default channels_last_off batched ...]
                              [--chunks 2] [--out bench/results_cpu.json]

Recipes: `demo` is the member of cfg/pipeline_demo.yaml (cfg/demo_wrn_dwce.yaml + the pipeline's train_overrides,
built by src.stages.members.build_member_config), `reference` is cfg/reference_ce.yaml; both read the crops of
--root (the per-image cost does not depend on which generated preset they come from).

1. Breakdown: each recipe x view set trains --epochs epochs with the project's own pieces, assembled as src.train
   assembles them (load_split, build_datasets, build_loaders, build_model, build_training_loss, build_optimizer,
   build_scheduler, CheckpointSaver), one epoch = src.train.train_one_epoch + src.train.validate per validation set
   + CheckpointSaver.save + metrics.csv + src.plots.plot_training_curves. Profiling hooks split the training
   pass: the loader is wrapped so that the wait for each batch is timed (data loading + per-sample augmentation,
   worker start-up included), the batched augmentation (augment.batched) is wrapped likewise; the model step
   (forward + backward + optimizer + the loop's bookkeeping) is the rest of train_one_epoch's time. `other` is
   the epoch's wall time not in any part (seeding, ...). Setup (crop caches, datasets, model) and
   src.train.finish (test + val predictions, once per run) are timed once.
2. Model step alone: --step-batches augmented batches are drawn first, then forward + loss + backward + AdamW
   step over them, in variants (--step-variants: fp32 channels_last / contiguous, bf16 autocast when the CPU has
   avx512_bf16 or AMX, torch.compile with its one-time compile cost in the warm-up column), interleaved in --chunks chunks. FLOPs of a step (forward
   + backward) come from torch.utils.flop_counter.FlopCounterMode; the peak is cores x GHz x FLOPs/cycle
   (--flops-per-cycle, default 32: one 512-bit fp32 FMA per cycle per core = 16 lanes x 2; Zen 4 issues AVX-512
   as two 256-bit FMA pipes, which is the same 32; GHz from /proc/cpuinfo's `cpu MHz`, no turbo assumed).
3. Options: each option is the demo member with a few config changes (or thread count); the options train
   whole epochs (the breakdown's epoch, so validation, checkpointing and logging count) in --chunks rounds,
   order reversed every round (A B C, C B A, ...) so that a change of machine load falls on all alike; one
   untimed warm-up epoch each first. With --max-steps the training pass is cut to that many steps and the
   epoch is estimated as (data + augment + step) x full steps / steps run + the rest (validation, checkpoint,
   logging: whole); the breakdown reports that estimate beside the measured total.
   Reported: seconds per (estimated full) epoch (mean of the chunks), the ratio default / option
   (> 1: the option is faster) of the means and the median of the per-round ratios. `uptime` is recorded
   before and after every section: this machine may be shared.

4. Side by side (--side-by-side N, 0: skip): N members of each --side-recipes recipe (seeds 0..N-1, whole
   trainings of --side-epochs epochs through src.train.train, setup and predictions included), trained one after
   another with --threads threads against N spawned processes of 1 thread each (the pipeline's
   `parallel_members`), interleaved in --chunks rounds; speed-up = one after another / side by side.

Writes --out (JSON) and the same path with .md (tables).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.common import REPO, machine_info
from src.artifacts import atomic_write_json, atomic_write_text, atomic_write_with
from src.checkpoint import CheckpointSaver
from src.config import Config, load_config
from src.data.training import build_datasets, build_loaders, load_split
from src.forward import amp_dtype
from src.losses import build_loss, build_training_loss
from src.models import build_model
from src.plots import plot_training_curves
from src.runtime import Runtime, epoch_seed, reseed_transforms, seed_everything
from src.schedule import build_scheduler
from src.taxonomy import RANKS, distance_matrix, load_taxonomy
from src.train import build_optimizer, finish, train_one_epoch, validate, validation_due

PARTS = ("data", "augment", "step", "validation", "checkpoint", "logging", "other")

# name -> (config overrides, torch threads or None: the config's). Applied to the demo member.
OPTIONS = {
    "default": ([], None),
    "channels_last_off": (["model.channels_last=false"], None),
    "batched_augment": (["augment.batched=true"], None),
    "workers_1": (["data.num_workers=1"], None),
    "validate_every_3": (["train.validate_every=3"], None),
    "full_checkpoint_every_5": (["train.full_checkpoint_every=5"], None),
    "threads_1": ([], 1),
    "batch_128": (["train.batch_size=128"], None),
    "compile": (["train.compile=true"], None),
    "fast": (["augment.batched=true", "train.validate_every=3"], None),
    "compile_validate_every_3": (["train.compile=true", "train.validate_every=3"], None),
}

DEFAULT_OPTIONS = ["default", "batched_augment", "workers_1", "threads_1", "validate_every_3", "batch_128", "fast"]

# step-alone variants of the demo member: name -> (config overrides, bf16 autocast). bf16 runs only on CPUs with
# avx512_bf16 or AMX; the first variant named is the reference of the speed-ups.
STEP_VARIANTS = {
    "fp32 channels_last": ([], False),
    "fp32 contiguous": (["model.channels_last=false"], False),
    "bf16 autocast channels_last": ([], True),
    "bf16 autocast contiguous": (["model.channels_last=false"], True),
    "fp32 channels_last compiled": (["train.compile=true"], False),
    "fp32 channels_last 1 thread": (["train.threads=1"], False),
}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return "uptime: not available"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_ghz() -> float:
    """The cores' clock from /proc/cpuinfo (cpu MHz of the first core), 0 when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000
    except (OSError, ValueError):
        pass
    return 0.0


EXTRA: list[str] = []  # --set: overrides of every config


def recipe_config(recipe: str, root: Path, views: list[str], run_dir: Path, overrides: list[str] = ()) -> Config:
    """The training Config of a recipe over the crops of root, writing to run_dir (then --set, then overrides)."""
    overrides = [*EXTRA, *overrides]
    solution = root / "solution.csv"
    common = [f"data.root={root}", f"data.views=[{','.join(views)}]", f"output.dir={run_dir.parent}",
              f"output.run_name={run_dir.name}", "train.progress=false", "train.device=cpu",
              f"data.solution={solution if solution.is_file() else 'null'}"]
    if recipe == "demo":
        from src.config import deep_merge, parse_overrides, validate_config
        from src.stages.members import build_member_config
        from src.stages.pipeline_config import load_pipeline_config

        pipe = load_pipeline_config(REPO / "cfg" / "pipeline_demo.yaml", [f"data_root={root}"])
        base = build_member_config(pipe, 0, pipe.seeds[0]).model_dump(mode="json")
        return validate_config(Config, deep_merge(base, parse_overrides(common + list(overrides), Config)),
                               source="cfg/pipeline_demo.yaml member")
    if recipe == "reference":
        return load_config(Config, REPO / "cfg" / "reference_ce.yaml", common + list(overrides))
    raise ValueError(f"unknown recipe {recipe!r}: demo or reference")


class TimedLoader:
    """Iterates a DataLoader (at most `limit` batches), adding the wait for each batch to .seconds."""

    def __init__(self, loader, limit: int | None = None):
        self.loader, self.limit, self.seconds = loader, limit, 0.0

    def __len__(self) -> int:
        return min(len(self.loader), self.limit or len(self.loader))

    def __iter__(self):
        start = time.perf_counter()
        it = iter(self.loader)
        self.seconds += time.perf_counter() - start
        for _ in range(len(self)):
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - start
            yield batch


class Timed:
    """A callable whose calls' seconds add up in .seconds."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


class Member:
    """One training run's pieces, built as src.train._train builds them (one process, CPU)."""

    def __init__(self, cfg: Config, threads: int | None = None, max_steps: int | None = None,
                 bf16: bool = False):
        start = time.perf_counter()
        self.cfg, self.max_steps = cfg, max_steps
        self.threads = threads or cfg.train.threads or torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self.rt = Runtime(0, 1, torch.device("cpu"), False)
        self.taxonomy = taxonomy = load_taxonomy()
        self.D = distance_matrix(taxonomy)
        self.rank_labels = {rank: taxonomy.rank_labels(rank)[0] for rank in RANKS[1:6]}
        self.train_cache = load_split(cfg, taxonomy, "train", progress=False)
        self.test_cache = load_split(cfg, taxonomy, "test", progress=False)
        self.data = build_datasets(cfg, taxonomy, self.train_cache, self.test_cache)
        self.loaders = build_loaders(cfg, self.data, 0, 1, self.rt.device)
        seed_everything(cfg.seed)
        aux = {rank: len(taxonomy.rank_labels(rank)[1]) for rank in cfg.model.aux_ranks}
        model = build_model(cfg, len(taxonomy.names), aux)
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.loss_fn = build_training_loss(cfg.loss, taxonomy, cfg.model.aux_ranks, model.num_features,
                                           cfg.model.avgk_head, self.data.set_targets, cfg.train.batch_size,
                                           cfg.seed, base=build_loss(cfg.loss, taxonomy))
        self.optimizer = build_optimizer(model, cfg.optim)
        steps = self.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, cfg.train.epochs * steps,
                                         round(cfg.optim.warmup_epochs * steps), cfg.optim.min_lr)
        self.dtype = torch.bfloat16 if bf16 else amp_dtype(cfg.train.amp, self.rt.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.run_dir = Path(cfg.output.dir) / cfg.output.run_name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.saver = CheckpointSaver(self.run_dir, model, self.optimizer, self.scheduler, self.scaler,
                                     self.loaders.generator, cfg.model_dump(mode="json"), taxonomy.names,
                                     cfg.train.full_checkpoint_every)
        self.net = torch.compile(model) if cfg.train.compile else model
        self.history: list[dict] = []
        self.setup_seconds = time.perf_counter() - start

    @property
    def steps_per_epoch(self) -> int:
        return min(len(self.loaders.train), self.max_steps or len(self.loaders.train))

    def epoch(self, epoch: int) -> dict:
        """Train epoch `epoch` (0-based; as src.train does: reseeded, validated when due, saved, logged);
        seconds per part, their total and the images trained."""
        torch.set_num_threads(self.threads)
        cfg, t = self.cfg, {}
        wall = time.perf_counter()
        seed = epoch_seed(cfg.seed, epoch, 0)
        seed_everything(seed)
        self.loaders.generator.manual_seed(seed)
        if self.loaders.augment_generator is not None:
            self.loaders.augment_generator.manual_seed(seed + 2**31)
        reseed_transforms(self.data.train, seed)
        loader = TimedLoader(self.loaders.train, self.max_steps)
        augment = Timed(self.loaders.augment) if self.loaders.augment is not None else None
        loss, seen, elapsed = train_one_epoch(self.net, loader, self.loss_fn, self.optimizer, self.scheduler,
                                              self.scaler, cfg.optim.grad_clip, self.rt, self.dtype, "", False,
                                              augment)
        t["data"] = loader.seconds
        t["augment"] = augment.seconds if augment else 0.0
        t["step"] = elapsed - t["data"] - t["augment"]
        row = {"epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0], "train_loss": loss,
               "epoch_seconds": elapsed, "train_img_per_s": seen / elapsed}
        start = time.perf_counter()
        if validation_due(epoch + 1, cfg.train):
            for name, ds in self.data.val.items():
                metrics = validate(self.model, self.loaders.eval(ds), self.data.val_labels, self.loss_fn, self.D,
                                   self.rank_labels, self.rt.device, self.dtype)
                row.update({f"{name}_{k}": v for k, v in metrics.items()})
        t["validation"] = time.perf_counter() - start
        self.history.append(row)
        start = time.perf_counter()
        self.saver.save(epoch + 1, self.history, last=epoch + 1 == cfg.train.epochs)
        t["checkpoint"] = time.perf_counter() - start
        start = time.perf_counter()
        history = self.history
        atomic_write_with(self.run_dir / "metrics.csv", lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
        if validation_due(epoch + 1, cfg.train):
            plot_training_curves(history, self.run_dir / "curves.png")
        t["logging"] = time.perf_counter() - start
        total = time.perf_counter() - wall
        t["other"] = total - sum(t[p] for p in PARTS if p != "other")
        scale = len(self.loaders.train) / self.steps_per_epoch  # > 1 when --max-steps cuts the epoch
        full = (t["data"] + t["augment"] + t["step"]) * scale + total - elapsed
        return {**t, "total": total, "full_epoch": full, "images": seen, "loss": loss}

    def finish(self) -> float:
        """src.train.finish (test and val predictions, done.json); its seconds."""
        start = time.perf_counter()
        finish(self.cfg, self.run_dir, self.model, self.data, self.loaders, self.train_cache, self.test_cache,
               self.history, self.taxonomy, self.D, self.dtype, self.rt.device)
        return time.perf_counter() - start


def breakdown(args, recipe: str, views: list[str], work: Path) -> dict:
    cfg = recipe_config(recipe, args.root, views, work / f"{recipe}_{'_'.join(views)}",
                        [f"train.epochs={args.epochs}"])
    member = Member(cfg, args.threads, args.max_steps)
    epochs = [member.epoch(e) for e in range(args.epochs)]
    finish_s = member.finish()
    mean = {k: float(np.mean([e[k] for e in epochs])) for k in (*PARTS, "total", "full_epoch", "images")}
    full_epochs = recipe_config(recipe, args.root, views, work / "x").train.epochs
    return {"recipe": recipe, "views": views, "backbone": cfg.model.backbone, "heads": cfg.model.num_heads,
            "loss": cfg.loss.name, "image_size": cfg.data.image_size, "batch": cfg.train.batch_size,
            "train_images": len(member.data.train), "steps_per_epoch": member.steps_per_epoch,
            "val_sets": list(member.data.val), "epochs_measured": args.epochs, "per_epoch": mean,
            "epochs": epochs, "train_img_per_s": mean["images"] / (mean["data"] + mean["augment"] + mean["step"]),
            "setup_s": member.setup_seconds, "finish_s": finish_s, "recipe_epochs": full_epochs,
            "member_estimate_s": member.setup_seconds + full_epochs * mean["full_epoch"] + finish_s,
            "full_steps_per_epoch": len(member.loaders.train), "uptime": uptime()}


def step_alone(args, work: Path) -> dict:
    """The demo member's training step on pre-drawn batches: variants interleaved; FLOPs and peak."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = cpu_flags()
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    variants = {name: STEP_VARIANTS[name] for name in args.step_variants if has_bf16 or not STEP_VARIANTS[name][1]}
    runs, batches = {}, None
    for name, (overrides, bf16) in variants.items():
        cfg = recipe_config("demo", args.root, ["roi"], work / f"step_{len(runs)}", overrides)
        own_threads = any(o.startswith("train.threads=") for o in overrides)  # a variant's own thread count
        m = Member(cfg, None if own_threads else args.threads, bf16=bf16)
        if batches is None:  # the same augmented batches for every variant
            it = iter(m.loaders.train)
            batches = []
            for _ in range(min(args.step_batches, len(m.loaders.train))):
                x, y = next(it)
                batches.append((m.loaders.augment(x) if m.loaders.augment else x, y))
        runs[name] = {"member": m, "bf16": bf16, "seconds": [], "images": []}
    x0, y0 = batches[0]

    def one_step(m: Member, bf16: bool, x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            out = m.net(x)
        loss = m.loss_fn.terms(out, y)
        m.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        m.optimizer.step()
        return float(loss.detach())

    first = next(iter(runs.values()))["member"]
    first.model.train()
    with FlopCounterMode(display=False) as counter:
        out = first.model(x0)
        first.loss_fn.terms(out, y0).backward()
    flops = counter.get_total_flops() / len(y0)  # per image, forward + backward
    for run in runs.values():  # warm-up (and compile)
        m = run["member"]
        m.model.train()
        torch.set_num_threads(m.threads)
        start = time.perf_counter()
        for x, y in batches[:2]:
            one_step(m, run["bf16"], x, y)
        run["warmup_s"] = time.perf_counter() - start
    names = list(runs)
    for chunk in range(args.chunks):
        for name in names[:: 1 if chunk % 2 == 0 else -1]:
            run, m = runs[name], runs[name]["member"]
            torch.set_num_threads(m.threads)
            start = time.perf_counter()
            for x, y in batches:
                run["last_loss"] = one_step(m, run["bf16"], x, y)
            run["seconds"].append(time.perf_counter() - start)
            run["images"].append(sum(len(y) for _, y in batches))
    ghz, cores = cpu_ghz(), args.threads
    peak = cores * ghz * args.flops_per_cycle
    base = names[0]
    rows = []
    for name in names:
        run = runs[name]
        rate = sum(run["images"]) / sum(run["seconds"])
        gflops = rate * flops / 1e9
        per_chunk = np.array(runs[base]["seconds"]) / np.array(run["seconds"])
        rows.append({"variant": name, "img_per_s": rate, "gflop_per_s": gflops,
                     "share_of_peak": gflops / peak if peak else float("nan"),
                     "speedup_vs_first": sum(runs[base]["seconds"]) / sum(run["seconds"]),
                     "median_chunk_speedup": float(np.median(per_chunk)), "warmup_s": run["warmup_s"],
                     "chunk_s": run["seconds"]})
    return {"gflop_per_image_fwd_bwd": flops / 1e9, "peak_gflop_per_s": peak, "ghz": ghz, "cores": cores,
            "flops_per_cycle": args.flops_per_cycle, "bf16_capable": has_bf16,
            "amx": bool({"amx_bf16", "amx_tile"} & flags), "batch": len(y0), "batches": len(batches),
            "rows": rows, "uptime": uptime()}


def options(args, work: Path) -> dict:
    """Whole demo-member epochs per option, interleaved; ratios against `default`."""
    names = ["default"] + [n for n in args.options if n != "default"]
    members = {}
    for name in names:
        overrides, threads = OPTIONS[name]
        cfg = recipe_config("demo", args.root, ["roi"], work / f"opt_{name}", overrides)
        members[name] = m = Member(cfg, threads or args.threads, args.max_steps)
        start = time.perf_counter()
        m.epoch(0)  # warm-up (compile included), untimed in the comparison
        members[name].first_epoch_s = time.perf_counter() - start
    seconds = {n: [] for n in names}
    for chunk in range(args.chunks):
        for name in names[:: 1 if chunk % 2 == 0 else -1]:
            seconds[name].append(members[name].epoch(1 + chunk)["full_epoch"])
    rows = []
    for name in names:
        s = np.array(seconds[name])
        rows.append({"option": name, "overrides": OPTIONS[name][0], "threads": members[name].threads,
                     "epoch_s": float(s.mean()), "first_epoch_s": members[name].first_epoch_s,
                     "speedup": float(np.mean(seconds["default"]) / s.mean()),
                     "median_round_speedup": float(np.median(np.array(seconds["default"]) / s)),
                     "chunk_s": s.tolist()})
    return {"rows": rows, "chunks": args.chunks, "uptime": uptime()}


def _train_timed(cfg: Config, threads: int) -> float:
    """One whole training in a worker process with `threads` torch threads; its seconds."""
    from src.train import train
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with open(os.devnull, "w") as sink, redirect_stdout(sink):
        train(cfg)
    return time.perf_counter() - start


def side_by_side(args, work: Path) -> dict:
    """N members per recipe trained one after another (--threads each) vs side by side (1 thread each)."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for recipe in args.side_recipes:
        seconds = {"one after another": [], "side by side": []}
        for chunk in range(args.chunks):
            for mode in list(seconds)[:: 1 if chunk % 2 == 0 else -1]:
                workers, threads = (1, args.threads) if mode == "one after another" else (args.side_by_side, 1)
                configs = [recipe_config(recipe, args.root, ["roi"], work / f"side_{recipe}_{chunk}_{workers}_{seed}",
                                         [f"seed={seed}", f"train.epochs={args.side_epochs}"])
                           for seed in range(args.side_by_side)]
                start = time.perf_counter()
                with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                    list(pool.map(_train_timed, configs, [threads] * len(configs)))
                seconds[mode].append(time.perf_counter() - start)
        a, b = np.array(seconds["one after another"]), np.array(seconds["side by side"])
        rows.append({"recipe": recipe, "members": args.side_by_side, "epochs": args.side_epochs,
                     "sequential_s": float(a.mean()), "side_by_side_s": float(b.mean()),
                     "speedup": float(a.mean() / b.mean()), "median_round_speedup": float(np.median(a / b)),
                     "chunk_s": {"one after another": a.tolist(), "side by side": b.tolist()}})
    return {"rows": rows, "threads": args.threads, "chunks": args.chunks, "uptime": uptime()}


def markdown(result: dict) -> str:
    lines = [f"# CPU training: where the time goes ({result['machine']['cpu']}, {result['threads']} threads)", "",
             f"`{result['command']}`", "", f"Load: before `{result['uptime_before']}`; after "
             f"`{result['uptime_after']}`.", ""]
    if result.get("breakdown"):
        lines += ["## Breakdown of a training epoch (seconds per epoch, mean over the measured epochs)", "",
                  "| recipe | views | model | train imgs | steps run / epoch | " + " | ".join(PARTS) + " | total | "
                  "full-epoch estimate | train img/s | "
                  "setup s | finish s | member estimate s | load |",
                  "|---|---|---|---:|---:|" + "---:|" * len(PARTS) + "---:|---:|---:|---:|---:|---:|---|"]
        for b in result["breakdown"]:
            e = b["per_epoch"]
            cells = " | ".join(f"{e[p]:.2f} ({e[p] / e['total']:.0%})" for p in PARTS)
            lines.append(f"| {b['recipe']} | {'+'.join(b['views'])} | {b['backbone']} {b['heads']}h {b['loss']} | "
                         f"{b['train_images']} | {b['steps_per_epoch']} of {b['full_steps_per_epoch']} | {cells} | "
                         f"{e['total']:.2f} | {e['full_epoch']:.1f} | {b['train_img_per_s']:.0f} | "
                         f"{b['setup_s']:.1f} | {b['finish_s']:.1f} | {b['member_estimate_s']:.0f} "
                         f"({b['recipe_epochs']} ep) | {b['uptime'].split('load average:')[-1].strip()} |")
        lines.append("")
    s = result.get("step")
    if s:
        lines += [f"## Model step alone (demo member, batch {s['batch']}, {s['batches']} batches per chunk)", "",
                  f"{s['gflop_per_image_fwd_bwd']:.3f} GFLOP per image (forward + backward, FlopCounterMode). Peak "
                  f"{s['peak_gflop_per_s']:.0f} GFLOP/s = {s['cores']} cores x {s['ghz']:.2f} GHz x "
                  f"{s['flops_per_cycle']} FLOP/cycle (fp32 AVX-512 FMA). bf16-capable: {s['bf16_capable']}, "
                  f"AMX: {s['amx']}. Load after: {s['uptime'].split('load average:')[-1].strip()}.", "",
                  "| variant | img/s | GFLOP/s | share of peak | speed-up vs first | median chunk speed-up | "
                  "warm-up s (2 steps; compile) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in s["rows"]:
            lines.append(f"| {r['variant']} | {r['img_per_s']:.0f} | {r['gflop_per_s']:.1f} | "
                         f"{r['share_of_peak']:.1%} | {r['speedup_vs_first']:.2f}x | {r['median_chunk_speedup']:.2f}x "
                         f"| {r['warmup_s']:.1f} |")
        lines.append("")
    o = result.get("options")
    if o:
        lines += [f"## Options: whole demo-member epochs, {o['chunks']} interleaved rounds (speed-up = default / "
                  "option seconds, > 1 is faster)", "", f"Load after: {o['uptime'].split('load average:')[-1].strip()}.",
                  "", "| option | overrides | threads | s / full epoch | first epoch s | speed-up | median round speed-up |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in o["rows"]:
            lines.append(f"| {r['option']} | {' '.join(r['overrides']) or '-'} | {r['threads']} | {r['epoch_s']:.2f} | "
                         f"{r['first_epoch_s']:.1f} | {r['speedup']:.2f}x | {r['median_round_speedup']:.2f}x |")
        lines.append("")
    side = result.get("side_by_side")
    if side:
        lines += [f"## Side by side: whole trainings of N members, one after another ({side['threads']} threads) "
                  f"vs N processes of 1 thread ({side['chunks']} interleaved rounds; speed-up > 1: side by side "
                  "is faster)", "", f"Load after: {side['uptime'].split('load average:')[-1].strip()}.", "",
                  "| recipe | members | epochs each | one after another s | side by side s | speed-up | "
                  "median round speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in side["rows"]:
            lines.append(f"| {r['recipe']} | {r['members']} | {r['epochs']} | {r['sequential_s']:.1f} | "
                         f"{r['side_by_side_s']:.1f} | {r['speedup']:.2f}x | {r['median_round_speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "inputs" / "synthetic" / "demo",
                        help="generated dataset folder with its crop caches (python -m src.synthetic ...)")
    parser.add_argument("--recipes", nargs="*", default=["demo", "reference"], help="breakdown recipes")
    parser.add_argument("--views", nargs="*", default=["roi", "roi,ctx3"], help="breakdown view sets (comma-joined)")
    parser.add_argument("--epochs", type=int, default=2, help="breakdown epochs per recipe x views")
    parser.add_argument("--max-steps", type=int, default=None, help="cap training steps per epoch (tests)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--step-batches", type=int, default=20, help="batches per chunk of the step-alone section "
                        "(0: skip it)")
    parser.add_argument("--step-variants", nargs="+", default=list(STEP_VARIANTS)[:4], choices=list(STEP_VARIANTS),
                        metavar="VARIANT", help="step-alone variants, the first is the reference (default: the "
                        f"first 4); known: {'; '.join(STEP_VARIANTS)}")
    parser.add_argument("--flops-per-cycle", type=float, default=32, help="fp32 FLOPs per cycle per core (peak)")
    parser.add_argument("--options", nargs="*", default=DEFAULT_OPTIONS,
                        help=f"options to compare end to end (none: skip); known: {', '.join(OPTIONS)}")
    parser.add_argument("--chunks", type=int, default=2, help="interleaved rounds (step and option sections)")
    parser.add_argument("--side-by-side", type=int, default=3, metavar="N",
                        help="members trained one after another vs side by side (0: skip that section)")
    parser.add_argument("--side-recipes", nargs="*", default=["demo", "reference"], help="side-by-side recipes")
    parser.add_argument("--side-epochs", type=int, default=2, help="epochs of each side-by-side training")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="training-config overrides applied to every recipe, variant and option (tests: a "
                        "smaller model, e.g. model.backbone=wrn10_1 data.image_size=16)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results_cpu.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    args = parser.parse_args(argv)
    unknown = [o for o in args.options if o not in OPTIONS]
    if unknown:
        parser.error(f"unknown options {unknown}; known: {', '.join(OPTIONS)}")
    EXTRA[:] = args.set
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    info = machine_info()
    result = {"machine": info, "threads": args.threads, "command": "python -m bench.bench_cpu " + " ".join(
        argv if argv is not None else os.sys.argv[1:]), "uptime_before": uptime()}
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {torch.__version__}, {args.threads} threads; "
          f"{result['uptime_before']}", flush=True)
    try:
        result["breakdown"] = []
        for recipe in args.recipes:
            for views in args.views:
                b = breakdown(args, recipe, views.split(","), work)
                result["breakdown"].append(b)
                e = b["per_epoch"]
                print(f"{recipe} {views}: " + ", ".join(f"{p} {e[p]:.2f}" for p in PARTS) +
                      f", total {e['total']:.2f} s/epoch; {b['train_img_per_s']:.0f} img/s; setup "
                      f"{b['setup_s']:.1f} s, finish {b['finish_s']:.1f} s; {b['uptime']}", flush=True)
        if args.step_batches:
            result["step"] = step_alone(args, work)
            for r in result["step"]["rows"]:
                print(f"step {r['variant']}: {r['img_per_s']:.0f} img/s, {r['gflop_per_s']:.1f} GFLOP/s "
                      f"({r['share_of_peak']:.1%} of peak), x{r['speedup_vs_first']:.2f}", flush=True)
        if args.options:
            result["options"] = options(args, work)
            for r in result["options"]["rows"]:
                print(f"option {r['option']}: {r['epoch_s']:.2f} s/epoch, x{r['speedup']:.2f} "
                      f"(median x{r['median_round_speedup']:.2f})", flush=True)
        if args.side_by_side and args.side_recipes:
            result["side_by_side"] = side_by_side(args, work)
            for r in result["side_by_side"]["rows"]:
                print(f"side by side {r['recipe']}: {r['members']} members x {r['epochs']} epochs: "
                      f"{r['sequential_s']:.1f} s one after another, {r['side_by_side_s']:.1f} s side by side, "
                      f"x{r['speedup']:.2f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["uptime_after"] = uptime()
    print(result["uptime_after"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
