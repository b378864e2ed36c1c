"""Training a round's members: their training configs (built from the pipeline config, checked against a
finished member's), training them one after another or as one SLURM array task, the sbatch command."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import shlex
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from src.config import ConfigError, deep_merge, load_config, load_yaml, parse_overrides, validate_config
from src.run_files import (
    CONFIG_FILE,
    TRAIN_LOG_FILE,
    WEIGHTS_FILE,
    drop_checkpoint,
    has_weights,
    is_done,
    warm_start_file,
    weights_file,
)
from src.stages.cli import StageError
from src.stages.pipeline_config import PipelineConfig, new_run_name


def validate_member_configs(cfg: PipelineConfig) -> None:
    """Build the training config of a member of round 0 (and of round 1): a typo in train_config or
    train_overrides is a ConfigError before any step runs, not after `prepare` recorded the run."""
    build_member_config(cfg, 0, cfg.seeds[0])
    if cfg.rounds:
        warm = cfg.layout.member_dir(0, cfg.seeds[0]) / WEIGHTS_FILE if cfg.warm_start else None
        build_member_config(cfg, 1, cfg.seeds[0], cfg.layout.pseudo_labels(1).resolve(), warm)


def train_member(config) -> Path:
    """src.train.train, imported late so the ensemble-only stages do not load torch; its input errors
    (a resume with a changed config, bad pseudo-labels) become StageError."""
    from src.checkpoint import ConfigMismatchError
    from src.data.training import PseudoLabelError
    from src.runtime import DeviceError
    from src.serialization import UnsafeFileError
    from src.train import train

    try:
        return Path(train(config))
    except (ConfigMismatchError, PseudoLabelError, DeviceError, UnsafeFileError) as err:
        raise StageError(str(err)) from None


def build_member_config(cfg: PipelineConfig, r: int, seed: int, pseudo_labels: Path | None = None,
                        init_checkpoint: Path | None = None, resume: bool = False):
    """A new training Config for one member: the training YAML, the pipeline's train_overrides (and, when it starts
    from init_checkpoint, warm_start_overrides), its place in the run."""
    from src.config import Config

    run_dir = cfg.layout.member_dir(r, seed)
    base = load_yaml(cfg.train_config) if cfg.train_config else {}
    overrides = [f"seed={seed}", f"data.split_seed={cfg.split_seed}", f"data.root={cfg.data_root}",
                 f"output.dir={run_dir.parent}", f"output.run_name={run_dir.name}"]
    if pseudo_labels is not None:
        overrides.append(f"data.pseudo_labels={pseudo_labels}")
    if cfg.solution:
        overrides.append(f"data.solution={cfg.solution}")
    if init_checkpoint is not None:
        overrides.append(f"model.pretrained_path={init_checkpoint}")
    if resume:
        overrides.append("train.resume=true")
    if cfg.allow_missing_test:
        overrides.append("data.allow_missing_test=true")
    tree = deep_merge(base, cfg.train_overrides)
    if init_checkpoint is not None:
        tree = deep_merge(tree, cfg.warm_start_overrides)
    tree = deep_merge(tree, parse_overrides(overrides, Config))
    return validate_config(Config, tree, source=f"{cfg.train_config or 'training defaults'} + train_overrides")


def train_round(cfg: PipelineConfig, r: int, pseudo_labels: Path | None = None, warm_from: int | None = None,
                trainer: Callable | None = None, member_index: int | None = None) -> list[Path]:
    """Train every seed's member of round r (cfg.parallel_members at a time), or only seeds[member_index] (a
    SLURM array task); members with done.json are skipped, an interrupted one resumes from its checkpoint. A
    finished member's checkpoint.pt is removed unless cfg.keep_checkpoints."""
    trainer = trainer or train_member
    if member_index is not None and not 0 <= member_index < len(cfg.seeds):
        raise StageError(f"member index {member_index} out of range for {len(cfg.seeds)} seeds")
    dirs, todo = [], []
    for i, seed in enumerate(cfg.seeds):
        if member_index is not None and i != member_index:
            continue
        run_dir = cfg.layout.member_dir(r, seed)
        dirs.append(run_dir)
        if is_done(run_dir):
            check_member_config(cfg, r, seed, pseudo_labels)
            drop_checkpoint(run_dir, keep=cfg.keep_checkpoints)
            print(f"  member seed {seed} ({i + 1}/{len(cfg.seeds)}): done, skipped", flush=True)
            continue
        init = None
        if warm_from is not None:
            try:
                init = weights_file(cfg.layout.member_dir(warm_from, seed))
            except FileNotFoundError as err:
                raise StageError(f"warm start: {err}") from None
        todo.append((i, seed, run_dir, build_member_config(cfg, r, seed, pseudo_labels, init, resume=has_weights(run_dir))))
    workers = min(cfg.parallel_members, len(todo))
    if workers > 1:
        _train_in_processes(cfg, todo, trainer, workers)
    for i, seed, run_dir, config in todo:
        if workers <= 1:
            start = time.time()
            print(f"  member seed {seed} ({i + 1}/{len(cfg.seeds)}): training -> {run_dir}", flush=True)
            trainer(config)
        if not is_done(run_dir):
            raise StageError(f"training of {run_dir} returned without writing done.json")
        drop_checkpoint(run_dir, keep=cfg.keep_checkpoints)
        if workers <= 1:
            print(f"  member seed {seed}: finished in {time.time() - start:.0f} s", flush=True)
    return dirs


def _train_logged(trainer: Callable, config, log_path: Path, workers: int) -> float:
    """One member in a worker process, its output into log_path (several members' lines would interleave);
    returns the seconds it took."""
    start = time.time()
    if config.train.threads is None:  # torch's default, every core, in each of several processes: oversubscribed
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        trainer(config)
    return time.time() - start


def _train_in_processes(cfg: PipelineConfig, todo: list, trainer: Callable, workers: int) -> None:
    """Train `todo`'s members `workers` at a time, each in its own (spawned) process: on a CPU, single-threaded
    members side by side use the cores better than one multi-threaded member after another (docs/pipeline.md).
    The first failure is raised once the members already running have stopped; the others are not started."""
    context = multiprocessing.get_context("spawn")  # a worker never inherits the parent's torch thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        running = {}
        for i, seed, run_dir, config in todo:
            run_dir.mkdir(parents=True, exist_ok=True)
            log = run_dir / TRAIN_LOG_FILE
            print(f"  member seed {seed} ({i + 1}/{len(cfg.seeds)}): training -> {run_dir} (log: {log})", flush=True)
            running[pool.submit(_train_logged, trainer, config, log, workers)] = seed
        try:
            for future in as_completed(running):
                seconds = future.result()
                print(f"  member seed {running[future]}: finished in {seconds:.0f} s", flush=True)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def check_member_config(cfg: PipelineConfig, r: int, seed: int, pseudo_labels: Path | None) -> None:
    """StageError when a finished member was trained with another config than this run now gives it (a
    changed train_config file, a run without state.json): it is never retrained or silently reused."""
    from src.checkpoint import FINAL_PREDICTION_KEYS, RESUMABLE_KEYS, config_differences  # training stages only
    from src.config import Config

    run_dir = cfg.layout.member_dir(r, seed)
    if not (run_dir / CONFIG_FILE).is_file():
        return
    try:
        saved = load_config(Config, run_dir / CONFIG_FILE).model_dump(mode="json")
    except ConfigError:
        saved = {}
    warm = None
    if cfg.warm_start and r:  # the file train_round started it from: model.pt, or an older run's checkpoint.pt
        warm = warm_start_file(cfg.layout.member_dir(r - 1, seed))
    wanted = build_member_config(cfg, r, seed, pseudo_labels, warm).model_dump(mode="json")
    reusable = tuple(k for k in RESUMABLE_KEYS if k not in FINAL_PREDICTION_KEYS)  # its predictions are final
    changed = config_differences(saved, wanted, reusable) if saved else ["(unreadable config.yaml)"]
    if changed:
        raise StageError(f"{run_dir} is finished but was trained with another config ({', '.join(changed[:5])}); "
                         f"it is not retrained: start a new run with name={new_run_name(cfg)}")


def sbatch_hint(config_path: str, overrides: list[str], r: int, n_members: int) -> str:
    """The SLURM job-array command that trains round r's members in parallel (one task per seed)."""
    args = [config_path, *(["--round", str(r)] if r else []), *overrides]
    return f"sbatch --array=0-{n_members - 1} train_model.sh {shlex.join(args)}"



