"""What the stages share: the CLI skeleton, training a round's members, loading their saved predictions."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from src.config import ConfigError, deep_merge, describe_config, load_yaml, parse_overrides, validate_config
from src.ensemble import EnsemblePredictions
from src.stages.pipeline_config import PipelineConfig, load_pipeline_config
from src.submission import LabelFileError
from src.taxonomy import Taxonomy, distance_matrix, load_taxonomy


class StageError(RuntimeError):
    """A stage cannot run (missing inputs, inconsistent artefacts); the message says why."""


# ----------------------------------------------------------------------------------------------- CLI
def stage_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The stage's argument parser: CONFIG, overrides, and every pipeline config key in --help."""
    parser = argparse.ArgumentParser(prog=f"python -m src.stages.{prog}", description=doc,
                                     epilog="pipeline config keys (key = default  # meaning):\n"
                                            + describe_config(PipelineConfig),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="pipeline config YAML (e.g. cfg/pipeline_demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the pipeline config")
    return parser


def run_cli(parser: argparse.ArgumentParser, body: Callable[[PipelineConfig, argparse.Namespace], object],
            argv: list[str] | None = None) -> int:
    """Parse, load the pipeline config, run `body`; one-line errors and exit code 2 on known failures
    (bad config, missing or inconsistent inputs)."""
    args = parser.parse_intermixed_args(argv)  # overrides may come after options
    try:
        cfg = load_pipeline_config(args.config, args.overrides)
        body(cfg, args)
    except (ConfigError, StageError, LabelFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------- training
def train_member(config) -> Path:
    """src.train.train, imported late so the ensemble-only stages do not load torch."""
    from src.train import train

    return Path(train(config))


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
    tree = deep_merge(base, cfg.train_overrides)
    if init_checkpoint is not None:
        tree = deep_merge(tree, cfg.warm_start_overrides)
    tree = deep_merge(tree, parse_overrides(overrides))
    return validate_config(Config, tree, source=f"{cfg.train_config or 'training defaults'} + train_overrides")


def train_round(cfg: PipelineConfig, r: int, pseudo_labels: Path | None = None, warm_from: int | None = None,
                trainer: Callable | None = None, member_index: int | None = None) -> list[Path]:
    """Train (sequentially) every seed's member of round r, or only seeds[member_index] (a SLURM array task);
    members with done.json are skipped, an interrupted one resumes from its checkpoint."""
    from src.checkpoint import saved_checkpoints  # torch: only the training stages load it
    from src.predict import weights_file

    trainer = trainer or train_member
    if member_index is not None and not 0 <= member_index < len(cfg.seeds):
        raise StageError(f"member index {member_index} out of range for {len(cfg.seeds)} seeds")
    dirs = []
    for i, seed in enumerate(cfg.seeds):
        if member_index is not None and i != member_index:
            continue
        run_dir = cfg.layout.member_dir(r, seed)
        if (run_dir / "done.json").is_file():
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
        trainer(build_member_config(cfg, r, seed, pseudo_labels, init, resume=bool(saved_checkpoints(run_dir))))
        if not (run_dir / "done.json").is_file():
            raise StageError(f"training of {run_dir} returned without writing done.json")
        print(f"  member seed {seed}: finished in {time.time() - start:.0f} s", flush=True)
        dirs.append(run_dir)
    return dirs


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
    ids, members, labels = None, [], None
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
            elif not np.array_equal(ids, these):
                raise StageError(f"{f}: annotation ids differ from the first member's (different {split} split?)")
            members.append(probs[:, order].astype(np.float32, copy=False))
    return EnsemblePredictions(ids, members, labels)


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
