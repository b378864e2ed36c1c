"""Accuracy on a generated benchmark: losses, decoders, ensemble, self-training, context, down-scaling.

    python -m src.data.synthetic --out inputs/synthetic/bench --preset bench --seed 0
    python -m src.data.download inputs/synthetic/bench/dataset_train.json inputs/synthetic/bench/train
    python -m src.data.download inputs/synthetic/bench/dataset_test.json inputs/synthetic/bench/test
    python -m bench.accuracy --root inputs/synthetic/bench --seeds 0 1 2 --epochs 8 --out outputs/bench/accuracy

Every model is trained with src.train.train from one recipe (the training YAML, default
cfg/demo_wrn_dwce.yaml, plus --set overrides) changing only what a variant names. The DW-CE (team
weights) models are round 0 of a self-training pipeline (src.stages: train_ensemble, pseudo_label,
retrain), so the ensemble and rounds 1..R reuse them. Jobs run in an order that gives every variant
one seed first; each finished run is skipped when the command is run again (an interrupted one resumes
from its checkpoint), and OUT/accuracy.json is rewritten (atomically) after every job from whatever is
complete, so a kill loses at most the run in progress. `python -m bench.report` tabulates it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.artifacts import atomic_write_json, atomic_write_text
from src.config import Config, deep_merge, load_yaml, parse_overrides, validate_config
from src.ensemble import decode_argmax, decode_bayes, decode_ensemble
from src.score import mean_distance, read_solution
from src.stages.common import has_weights, load_predictions
from src.stages.pipeline_config import PipelineConfig
from src.taxonomy import distance_matrix, load_taxonomy

PIPELINE_NAME = "selftrain"


@dataclass(frozen=True)
class Variant:
    """A single-model variant of the recipe: a name, a description, and its training-config overrides."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict)


VARIANTS = (
    Variant("ce", "CE", {"loss": {"name": "ce"}}),
    Variant("dwce_team", "DW-CE, team weights (D+I)/rowsum", {"loss": {"name": "dwce", "dwce_weights": "team"}}),
    Variant("dwce_paper", "DW-CE, paper weights (D+1)/rowsum", {"loss": {"name": "dwce", "dwce_weights": "paper"}}),
    Variant("ce_expdist", "CE + 0.1 x expected distance", {"loss": {"name": "ce_expdist", "expdist_lambda": 0.1}}),
    Variant("soft_labels", "soft labels softmax(-D[i])", {"loss": {"name": "soft_labels", "soft_beta": 1.0}}),
    Variant("dwce_ctx3", "DW-CE team + context crop (views roi+ctx3)", {"data": {"views": ["roi", "ctx3"]}}),
    Variant("dwce_no_downscale", "DW-CE team without down-scaling augmentation", {"augment": {"downscale": None}}),
)
BASE_VARIANT = "dwce_team"  # trained as the pipeline's round 0


@dataclass
class Plan:
    """Everything a benchmark run needs; the recipe tree is shared by every variant."""

    root: Path
    out: Path
    seeds: list[int]
    epochs: int
    rounds: int
    min_votes: int
    train_config: str
    recipe_overrides: dict
    variants: tuple = VARIANTS

    @property
    def solution(self) -> Path:
        return self.root / "solution.csv"

    def recipe(self) -> dict:
        """train_overrides shared by every run: the recipe overrides plus epochs and quiet output."""
        return deep_merge(self.recipe_overrides, {"train": {"epochs": self.epochs, "progress": False}})

    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(name=PIPELINE_NAME, train_config=self.train_config, train_overrides=self.recipe(),
                              data_root=str(self.root), solution=str(self.solution), seeds=self.seeds,
                              split_seed=0, rounds=self.rounds, pseudo={"min_votes": self.min_votes},
                              decoding={"decoders": ["argmax", "vote", "bayes"]},
                              output_root=str(self.out / "pipeline"),
                              submissions_dir=str(self.out / "submissions"))

    def run_dir(self, variant: str, seed: int) -> Path:
        if variant == BASE_VARIANT:
            return self.pipeline().layout.member_dir(0, seed)
        return self.out / "runs" / variant / f"seed_{seed}"

    def config(self, variant: Variant, seed: int) -> Config:
        """The training Config of one single-model run (same keys as a pipeline member's)."""
        run_dir = self.run_dir(variant.name, seed)
        tree = deep_merge(deep_merge(load_yaml(self.train_config), self.recipe()), variant.overrides)
        tree = deep_merge(tree, parse_overrides([
            f"seed={seed}", "data.split_seed=0", f"data.root={self.root}", f"data.solution={self.solution}",
            f"output.dir={run_dir.parent}", f"output.run_name={run_dir.name}"]))
        if has_weights(run_dir):  # a killed run: model.pt alone also needs train.resume
            tree = deep_merge(tree, {"train": {"resume": True}})
        return validate_config(Config, tree, source=f"{self.train_config} + {variant.name}")


def is_done(run_dir: Path) -> bool:
    return (run_dir / "done.json").is_file()


# ------------------------------------------------------------------------------------------- metrics
def label_metrics(decoded: dict[str, np.ndarray], truth: np.ndarray, D: np.ndarray) -> dict:
    """<decoder>_distance and <decoder>_accuracy of each decoder's labels (N,) against the truth (N,)."""
    out = {}
    for name, pred in decoded.items():
        out[f"{name}_distance"] = mean_distance(truth, pred, D)
        out[f"{name}_accuracy"] = float((truth == pred).mean())
    return out


def decode_metrics(probs: np.ndarray, truth: np.ndarray, D: np.ndarray) -> dict:
    """Mean distance and accuracy of argmax and Bayes decoding of (N, C) probabilities."""
    return label_metrics({"argmax": decode_argmax(probs), "bayes": decode_bayes(probs, D)}, truth, D)


def run_metrics(run_dir: Path, truth_of, taxonomy, D: np.ndarray) -> dict:
    """Test metrics of one finished run (head-mean probabilities), its epochs and training time."""
    preds = load_predictions([run_dir], "test", taxonomy)
    truth = truth_of(preds.annotation_id)
    metrics = decode_metrics(preds.mean, truth, D)
    history = run_dir / "metrics.csv"
    if history.is_file():
        import pandas as pd

        frame = pd.read_csv(history)
        metrics["train_seconds"] = float(frame["epoch_seconds"].sum())
        metrics["train_img_per_s"] = float(frame["train_img_per_s"].median())
        metrics["epochs"] = int(frame["epoch"].max())
    return metrics


def ensemble_metrics(member_dirs: list[Path], truth_of, taxonomy, D: np.ndarray) -> dict:
    """Argmax of the mean, vote (ties by U) and Bayes decoding of an ensemble's test predictions."""
    preds = load_predictions(member_dirs, "test", taxonomy)
    truth = truth_of(preds.annotation_id)
    decoded = decode_ensemble(preds, ["argmax", "vote", "bayes"], taxonomy, "top2_sigma", 0.3)
    return {"members": len(member_dirs), **label_metrics(decoded.labels, truth, D)}


def collect(plan: Plan) -> dict:
    """Every metric computable from the finished runs under plan.out (nothing is trained here)."""
    taxonomy = load_taxonomy()
    D = distance_matrix(taxonomy)
    cache: dict = {}

    def truth_of(annotation_id: np.ndarray) -> np.ndarray:
        key = annotation_id.tobytes()
        if key not in cache:
            cache[key] = read_solution(plan.solution, annotation_id, taxonomy)
        return cache[key]

    singles = {}
    for v in plan.variants:
        runs = {seed: run_metrics(plan.run_dir(v.name, seed), truth_of, taxonomy, D)
                for seed in plan.seeds if is_done(plan.run_dir(v.name, seed))}
        if runs:
            singles[v.name] = {"label": v.label, "runs": {str(s): m for s, m in runs.items()}}
    pipe = plan.pipeline()
    rounds, pseudo = {}, {}
    for r in range(plan.rounds + 1):
        members = [pipe.layout.member_dir(r, s) for s in plan.seeds]
        if all(is_done(m) for m in members):
            rounds[str(r)] = ensemble_metrics(members, truth_of, taxonomy, D)
        stats = pipe.layout.round_dir(r) / "stats.json"
        if stats.is_file():
            s = json.loads(stats.read_text())
            pseudo[str(r)] = {k: s.get(k) for k in ("count", "coverage", "accuracy", "mean_distance", "min_votes",
                                                     "u_threshold", "added", "dropped", "changed", "curves")}
    return {"root": str(plan.root), "seeds": plan.seeds, "epochs": plan.epochs, "rounds": plan.rounds,
            "min_votes": plan.min_votes, "train_config": plan.train_config, "recipe_overrides": plan.recipe(),
            "variants": {v.name: {"label": v.label, "overrides": v.overrides} for v in plan.variants},
            "test_rois": int(len(next(iter(cache.values())))) if cache else None,
            "single": singles, "ensemble_rounds": rounds, "pseudo_labels": pseudo}


# ------------------------------------------------------------------------------------------- running
def jobs(plan: Plan, part: str = "all") -> list[tuple[str, callable]]:
    """(name, action) in priority order: base ensemble, one seed of every variant, self-training, more seeds.

    part 'pipeline': the ensemble and self-training rounds first, then the variants; 'variants': the
    single-model variants only (a second worker process: the two share the list through claim files)."""
    from src.stages.pseudo_label import make_pseudo_labels
    from src.stages.retrain import retrain
    from src.stages.train_ensemble import train_ensemble
    from src.train import train

    pipe = plan.pipeline()
    others = [v for v in plan.variants if v.name != BASE_VARIANT]
    rounds = [(f"self-training round {r}", lambda r=r: (make_pseudo_labels(pipe, r), retrain(pipe, r)))
              for r in range(1, plan.rounds + 1)]
    first = [(f"{v.name} seed {plan.seeds[0]}", lambda v=v: train(plan.config(v, plan.seeds[0]))) for v in others]
    rest = [(f"{v.name} seed {s}", lambda v=v, s=s: train(plan.config(v, s))) for s in plan.seeds[1:] for v in others]
    base = [("round 0 ensemble (DW-CE team)", lambda: train_ensemble(pipe))]
    if part == "pipeline":
        return base + rounds + first + rest
    if part == "variants":
        return first + rest
    return base + first + rounds + rest


def claim(plan: Plan, name: str) -> bool:
    """Atomically claim a job for this process (a file under OUT/claims); False when another has it."""
    folder = plan.out / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / (name.replace(" ", "_").replace("/", "_") + ".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def job_done(plan: Plan, name: str) -> bool:
    pipe = plan.pipeline()
    if name.startswith("round 0"):
        return all(is_done(pipe.layout.member_dir(0, s)) for s in plan.seeds)
    if name.startswith("self-training round"):
        r = int(name.rsplit(" ", 1)[1])
        return all(is_done(pipe.layout.member_dir(r, s)) for s in plan.seeds)
    variant, _, seed = name.rpartition(" seed ")
    return is_done(plan.run_dir(variant, int(seed)))


def run(plan: Plan, deadline: float | None = None, part: str = "all", shared: bool = False) -> dict:
    """Run every unfinished job in order (stopping before one would start after `deadline`, a time.time());
    rewrite OUT/accuracy.json after each. With `shared`, jobs another process claimed are left to it.
    Returns the final collection."""
    plan.out.mkdir(parents=True, exist_ok=True)
    result_path = plan.out / "accuracy.json"
    todo = jobs(plan, part)
    for i, (name, action) in enumerate(todo, 1):
        if job_done(plan, name):
            print(f"[{i}/{len(todo)}] {name}: done, skipped", flush=True)
            continue
        if deadline is not None and time.time() > deadline:
            print(f"[{i}/{len(todo)}] {name}: past the deadline, not started", flush=True)
            break
        if shared and not claim(plan, name):
            print(f"[{i}/{len(todo)}] {name}: claimed by another process, skipped", flush=True)
            continue
        start = time.time()
        print(f"[{i}/{len(todo)}] {name}: running", flush=True)
        action()
        print(f"[{i}/{len(todo)}] {name}: {time.time() - start:.0f} s", flush=True)
        atomic_write_json(result_path, collect(plan))
    result = collect(plan)
    atomic_write_json(result_path, result)
    return result


def build_plan(args: argparse.Namespace) -> Plan:
    base = {"model": {"backbone": "wrn10_2"}}
    return Plan(root=Path(args.root), out=Path(args.out), seeds=list(args.seeds), epochs=args.epochs,
                rounds=args.rounds, min_votes=args.min_votes, train_config=args.train_config,
                recipe_overrides=deep_merge(base, parse_overrides(args.set)))


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="inputs/synthetic/bench", help="dataset folder with solution.csv")
    parser.add_argument("--out", default="outputs/bench/accuracy", help="runs and accuracy.json go here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="self-training rounds after the initial ensemble")
    parser.add_argument("--min-votes", type=int, default=2, help="pseudo-label gate: members that must agree")
    parser.add_argument("--train-config", default="cfg/demo_wrn_dwce.yaml", help="recipe YAML")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every run (default adds model.backbone=wrn10_2)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(parser)
    parser.add_argument("--deadline", help="UTC time HH:MM after which no new job starts")
    parser.add_argument("--part", choices=("all", "pipeline", "variants"), default="all",
                        help="job order; run 'pipeline' and 'variants' as two processes with --shared")
    parser.add_argument("--shared", action="store_true",
                        help="claim each job with a file under OUT/claims so parallel processes split the work")
    args = parser.parse_args(argv)
    deadline = None
    if args.deadline:
        from datetime import datetime, timezone

        hh, mm = (int(x) for x in args.deadline.split(":"))
        now = datetime.now(timezone.utc)
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    plan = build_plan(args)
    if not plan.solution.is_file():
        parser.error(f"{plan.solution} not found: generate the benchmark first (see --help)")
    plan.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "bench.accuracy", *(argv if argv is not None else sys.argv[1:])])
    atomic_write_text(plan.out / f"command_{args.part}.txt", command + "\n")
    run(plan, deadline, args.part, args.shared)
    print(f"wrote {plan.out / 'accuracy.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
