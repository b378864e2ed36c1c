"""What the stages share: the CLI skeleton, the run folder's lock and config fingerprint, training a round's
members, loading their saved predictions."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from src.artifacts import (
    RunLockedError, atomic_write_json, create_json_if_absent, exit_code, remove_stale_temps, run_lock,
)
from src.config import (
    ConfigError, config_sources, config_to_yaml, deep_merge, describe_config, load_config, load_yaml, parse_overrides,
    validate_config,
)
from src.data.coco import annotation_table, frame_ids_of
from src.ensemble import FRAME_DECODERS, EnsemblePredictions, FramePrior, fit_frame_prior, fit_validation_temperature
from src.stages.pipeline_config import PipelineConfig, load_pipeline_config
from src.submission import LabelFileError
from src.taxonomy import Taxonomy, distance_matrix, load_taxonomy


class StageError(RuntimeError):
    """A stage cannot run (missing inputs, inconsistent artefacts); the message says why."""


def check_round(cfg: PipelineConfig, r: int) -> int:
    """StageError for a round outside 0..cfg.rounds (a --round beyond the configured rounds); returns r."""
    if not 0 <= r <= cfg.rounds:
        raise StageError(f"round {r} is not a round of this run: the configured rounds are 0..{cfg.rounds}")
    return r


# ----------------------------------------------------------------------------------------------- CLI
def preferred_decoder(available: list[str]) -> str:
    """The decoder a submission uses by default: frame_bayes (the lowest distance on the generated benchmark,
    bench/RESULTS.md), else bayes, else the first of `available`; StageError when there is none."""
    if not available:
        raise StageError("no decoder left to choose from: every decoder was skipped (see the submit table: "
                         "missing validation predictions or frames) or none is configured (decoding.decoders)")
    return next((d for d in ("frame_bayes", "bayes") if d in available), available[0])


def stage_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The stage's argument parser: CONFIG, overrides, and every pipeline config key in --help."""
    parser = argparse.ArgumentParser(prog=f"python -m src.stages.{prog}", description=doc,
                                     epilog="pipeline config keys (key = default  # meaning):\n"
                                            + describe_config(PipelineConfig),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="pipeline config YAML (e.g. cfg/pipeline_demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the pipeline config")
    parser.add_argument("--wait", action="store_true",
                        help="when another process works in the run folder: wait for it (default: stop, naming it)")
    return parser


def run_cli(parser: argparse.ArgumentParser, body: Callable[[PipelineConfig, argparse.Namespace], object],
            argv: list[str] | None = None) -> int:
    """Parse, load the pipeline config, run `body`; one-line errors and exit code 2 on known failures
    (bad config, missing or inconsistent inputs, a run folder in use or made with another config), 1 when
    a write fails (read-only folder, full disk)."""
    args = parser.parse_intermixed_args(argv)  # overrides may come after options
    return exit_code(lambda: body(load_pipeline_config(args.config, args.overrides), args),
                     (ConfigError, StageError, LabelFileError, FileNotFoundError, RunLockedError))


# ------------------------------------------------------------------------------------ the run folder
def config_fingerprint(cfg: PipelineConfig) -> str:
    """Hash of the resolved pipeline config and the text of the training config file (and of its bases)."""
    sources = config_sources(cfg.train_config) if cfg.train_config else []
    text = config_to_yaml(cfg) + "".join(path.read_text() for path in sources)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_run_name(cfg: PipelineConfig) -> str:
    """A name no run under output_root has yet: <name>_2, <name>_3, ..."""
    k = 2
    while (Path(cfg.output_root) / f"{cfg.name}_{k}").exists():
        k += 1
    return f"{cfg.name}_{k}"


def load_state(cfg: PipelineConfig) -> dict:
    """The run's state.json (config fingerprint, finished steps), created for this config when absent.

    StageError when the run was started with a different config: finished steps are never redone or
    rewritten under another config, the message names a new run name to use instead."""
    fingerprint = config_fingerprint(cfg)
    path = cfg.layout.state
    if not path.is_file():
        create_json_if_absent(path, {"config_fingerprint": fingerprint, "finished": {}})
    state = json.loads(path.read_text())
    if state.get("config_fingerprint") != fingerprint:
        raise StageError(f"{cfg.layout.root} was started with a different config (see its pipeline.yaml and "
                         f"state.json), and what it holds is not redone or rewritten with another one: start a new "
                         f"run with name={new_run_name(cfg)} (or remove {cfg.layout.root} to start over)")
    return state


def record_step(cfg: PipelineConfig, state: dict, step: str, seconds: float) -> None:
    """Mark `step` finished in state.json (the pipeline then skips it)."""
    state["finished"][step] = {"seconds": round(seconds, 2),
                               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(cfg.layout.state, state)


def remove_run_temps(cfg: PipelineConfig) -> int:
    """Remove the temporary files a killed stage left in the run folder, its rounds and its submissions
    (members' folders are cleaned by their training). Call it holding the run's lock."""
    layout = cfg.layout
    folders = [layout.root, layout.submit_dir, *layout.root.glob("round_*")]
    removed = sum(remove_stale_temps(folder) for folder in folders)
    for decoder in cfg.decoding.decoders:
        path = layout.submission(decoder)
        removed += remove_stale_temps(path.parent, f".{path.name}.*.tmp")
    return removed


def validate_member_configs(cfg: PipelineConfig) -> None:
    """Build the training config of a member of round 0 (and of round 1): a typo in train_config or
    train_overrides is a ConfigError before any step runs, not after `prepare` recorded the run."""
    build_member_config(cfg, 0, cfg.seeds[0])
    if cfg.rounds:
        warm = cfg.layout.member_dir(0, cfg.seeds[0]) / WEIGHTS_FILES[0] if cfg.warm_start else None
        build_member_config(cfg, 1, cfg.seeds[0], cfg.layout.pseudo_labels(1).resolve(), warm)


def is_main_process() -> bool:
    """False in the other processes of a torchrun job (they train; rank 0 keeps the books)."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def open_run(cfg: PipelineConfig, step: str | None = None, wait: bool = False, lock: bool = True) -> Iterator[dict]:
    """Around every stage's work: check the member configs, hold the run folder's lock (unless `lock` is
    False: a SLURM array task training one member, which locks only its member's folder), check the
    config fingerprint (recording it in a new run), remove temporary files a killed run left; on success
    record `step` as finished. Yields the run's state."""
    validate_member_configs(cfg)
    lock = lock and is_main_process()
    advice = "wait for it to finish (--wait waits), or use another run name"
    with run_lock(cfg.layout.root, wait, advice) if lock else contextlib.nullcontext():
        state = load_state(cfg)
        if lock:
            remove_run_temps(cfg)
        start = time.time()
        yield state
        if step is not None and lock and step not in state["finished"]:
            record_step(cfg, state, step, time.time() - start)


# ---------------------------------------------------------------------------------------- training
# A member's weight files, preferred first: src.checkpoint's WEIGHTS_FILE and CHECKPOINT_FILE (named here so
# that the ensemble-only stages need not load torch).
WEIGHTS_FILES = ("model.pt", "checkpoint.pt")


def has_weights(run_dir: Path) -> bool:
    """Whether a member's folder holds saved weights (model.pt or checkpoint.pt): its training has begun."""
    return any((Path(run_dir) / name).is_file() for name in WEIGHTS_FILES)


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
    """Train (sequentially) every seed's member of round r, or only seeds[member_index] (a SLURM array task);
    members with done.json are skipped, an interrupted one resumes from its checkpoint."""
    from src.predict import weights_file  # torch: only the training stages load it

    trainer = trainer or train_member
    if member_index is not None and not 0 <= member_index < len(cfg.seeds):
        raise StageError(f"member index {member_index} out of range for {len(cfg.seeds)} seeds")
    dirs = []
    for i, seed in enumerate(cfg.seeds):
        if member_index is not None and i != member_index:
            continue
        run_dir = cfg.layout.member_dir(r, seed)
        if (run_dir / "done.json").is_file():
            check_member_config(cfg, r, seed, pseudo_labels)
            print(f"  member seed {seed} ({i + 1}/{len(cfg.seeds)}): done, skipped", flush=True)
            dirs.append(run_dir)
            continue
        init = None
        if warm_from is not None:
            try:
                init = weights_file(cfg.layout.member_dir(warm_from, seed))
            except FileNotFoundError as err:
                raise StageError(f"warm start: {err}") from None
        start = time.time()
        print(f"  member seed {seed} ({i + 1}/{len(cfg.seeds)}): training -> {run_dir}", flush=True)
        trainer(build_member_config(cfg, r, seed, pseudo_labels, init, resume=has_weights(run_dir)))
        if not (run_dir / "done.json").is_file():
            raise StageError(f"training of {run_dir} returned without writing done.json")
        print(f"  member seed {seed}: finished in {time.time() - start:.0f} s", flush=True)
        dirs.append(run_dir)
    return dirs


def check_member_config(cfg: PipelineConfig, r: int, seed: int, pseudo_labels: Path | None) -> None:
    """StageError when a finished member was trained with another config than this run now gives it (a
    changed train_config file, a run without state.json): it is never retrained or silently reused."""
    from src.checkpoint import FINAL_PREDICTION_KEYS, RESUMABLE_KEYS, config_differences  # training stages only
    from src.config import Config

    run_dir = cfg.layout.member_dir(r, seed)
    if not (run_dir / "config.yaml").is_file():
        return
    try:
        saved = load_config(Config, run_dir / "config.yaml").model_dump(mode="json")
    except ConfigError:
        saved = {}
    warm = None
    if cfg.warm_start and r:  # the file train_round started it from: model.pt, or an older run's checkpoint.pt
        previous = cfg.layout.member_dir(r - 1, seed)
        warm = next((previous / name for name in WEIGHTS_FILES if (previous / name).is_file()),
                    previous / WEIGHTS_FILES[0])
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


# ------------------------------------------------------------------------------- ensemble loading
def load_predictions(member_dirs: list[Path], split: str, taxonomy: Taxonomy) -> EnsemblePredictions | None:
    """Read `<split>_probs.npz` of every member (split 'test' or 'val'); None when no member has the file."""
    files = [Path(d) / f"{split}_probs.npz" for d in member_dirs]
    present = [f.is_file() for f in files]
    if not any(present):
        return None
    if not all(present):
        raise StageError(f"{files[present.index(False)]} is missing while other members have it")
    ids, members, labels, frames, views, member_views, set_scores = None, [], None, None, set(), [], []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            if tuple(z["classes"].tolist()) != taxonomy.names:
                raise StageError(f"{f}: class order differs from the taxonomy's canonical order")
            probs = z["probs"]
            probs = probs[None] if probs.ndim == 2 else probs
            order = np.argsort(z["annotation_id"], kind="stable")
            these = z["annotation_id"][order]
            if ids is None:
                ids = these
                labels = z["labels"][order].astype(np.int64) if "labels" in z.files else None
                frames = z["image_id"][order].astype(np.int64) if "image_id" in z.files else None  # older files lack it
            elif not np.array_equal(ids, these):
                raise StageError(f"{f}: annotation ids differ from the first member's (different {split} split?)")
            members.append(probs[:, order].astype(np.float32, copy=False))
            views.add(tuple(z["views"].tolist()) if "views" in z.files else ("identity",))
            if "view_probs" in z.files:
                member_views.append(z["view_probs"][:, :, order])
            if "avgk_scores" in z.files:
                set_scores.append(z["avgk_scores"][order])
    if len(views) > 1:
        raise StageError(f"the members' {split} predictions were made with different test-time views {sorted(views)}")
    return EnsemblePredictions(ids, members, labels, frames, views.pop(),
                               member_views if len(member_views) == len(files) else None,
                               set_scores if len(set_scores) == len(files) else None)


@dataclass
class RoundPredictions:
    """A round's validation and test predictions (None where the members have none) and the decoders'
    parameters fitted on validation: the temperature of bayes_cal, the frame prior of the frame decoders."""

    val: EnsemblePredictions | None
    test: EnsemblePredictions | None
    temperature: float | None
    frame_prior: FramePrior | None


def load_round(cfg: PipelineConfig, members: list[Path], taxonomy: Taxonomy,
               frame_decoders: list[str] | None = None) -> RoundPredictions:
    """The members' val/test predictions (None where absent) and the decoders' parameters fitted on validation,
    one code path for submit, package and the pseudo-label stage: bayes_cal's temperature and, for
    `frame_decoders` (default: the frame decoders in decoding.decoders), a frame prior whose K is counted on
    the training frames of data_root/dataset_train.json outside the validation frames. With frame decoders the
    ROIs' frame ids are attached: test from dataset_test.json, validation from the val files (files written
    before training saved image_id: from dataset_train.json)."""
    val, test = load_predictions(members, "val", taxonomy), load_predictions(members, "test", taxonomy)
    if frame_decoders is None:
        frame_decoders = [d for d in cfg.decoding.decoders if d in FRAME_DECODERS]
    frame_prior = None
    if frame_decoders:
        train_json, test_json = Path(cfg.data_root) / "dataset_train.json", Path(cfg.data_root) / "dataset_test.json"
        train = _coco_table(train_json)
        if test is not None:
            test.frame_ids = _coco_frame_ids(test_json, _coco_table(test_json), test.annotation_id)
        if val is not None and val.frame_ids is None:
            val.frame_ids = _coco_frame_ids(train_json, train, val.annotation_id)
        frame_prior = fit_frame_prior(val, train["image_id"].to_numpy(), taxonomy.indices(train["concept_name"]),
                                      distance_matrix(taxonomy), frame_decoders, cfg.decoding.frame_iterations,
                                      cfg.decoding.frame_smoothing)
    return RoundPredictions(val, test, fit_validation_temperature(val), frame_prior)


def _coco_table(path: Path):
    """`annotation_table` of a COCO file; StageError when it cannot be read."""
    try:
        return annotation_table(path)
    except ValueError as err:
        raise StageError(str(err)) from None


def _coco_frame_ids(path: Path, table, annotation_ids) -> np.ndarray:
    try:
        return frame_ids_of(table, annotation_ids)
    except ValueError as err:
        raise StageError(f"{path}: {err}") from None


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of `rows` (floats to 3 decimals, missing cells blank)."""
    def cell(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def load_taxonomy_and_distance() -> tuple[Taxonomy, np.ndarray]:
    taxonomy = load_taxonomy()
    return taxonomy, distance_matrix(taxonomy)
