"""The method's claims on a generated benchmark: losses, ensembles and decoders, self-training, context,
down-scaling, and the seed options (FIERCE, average-K head), each with several seeds, paired by seed.

    python -m bench.realism --gen-seeds 0 --model-seeds 0        # or: generate + crop the bench preset yourself
    python -m bench.accuracy --root outputs/realism/bench_g0 --out outputs/bench/accuracy
    python -m bench.report --no-speed                            # tabulates it into bench/RESULTS.md

Every model is trained with src.train.train from one recipe (default cfg/reference_ce.yaml: WRN-10-2 at
32 px, 20 epochs, which converges on the bench preset) changing only what a variant names; a run of seed s
uses seed s for its weights and batches in every variant, and every run holds out the same frame-grouped
validation split (split seed 0), so variants are compared paired by seed. The DW-CE (team weights)
models of the pipeline seeds are round 0 of a self-training pipeline (src.stages: train_ensemble,
pseudo_label, retrain) whose rounds >= 1 fine-tune the previous round's member (`--warm-epochs`), so the
ensemble and the rounds reuse them; round 1 is also trained from round 0 with coarse pseudo-labels and with
its members trained from scratch on the same pseudo-labels (the pseudo-labels' effect without extra
epochs); `--ensemble-seeds` trains more DW-CE seeds for 5- and 8-member ensembles (and the spread of the
argmax and Bayes distance over every k-subset of the seeds, `ensemble_subsets`). Jobs run in priority
order (`jobs`; a round's members are separate jobs); a finished run is skipped when the command is run
again (an interrupted one resumes from its checkpoint), and OUT/accuracy.json is rewritten (atomically)
after every job from whatever is complete, so a kill loses at most the run in progress. Two processes with
`--shared` split the jobs (claim files under OUT/claims; delete them when no process runs), e.g. two of
`--part all --set train.threads=1` on 2 cores;
`--only NAME...` keeps just those single-model variants (the named order first within each seed pass;
with `--part all` the pipeline's jobs still come first). One more independent self-training pipeline is
one more study with other member seeds, its own OUT and ledger, and no single-model variants, e.g.
`--seeds 3 4 5 --ensemble-seeds --only dwce_team --out outputs/bench/accuracy_pipeline_1
--ledger bench/accuracy_ledger_pipeline_1.json` (`bench.report --pipeline-dirs` compares the rounds over
the pipelines, paired by pipeline).

The run folders under outputs/ are not committed, so the figures are also kept in the committed ledger
bench/accuracy_ledger.json (`--ledger`), rewritten after every job: a fresh checkout's tables start from
it, runs measured again replace its figures, and RESULTS.md names the figures that come from it alone.
A single run the ledger holds is not trained again, nor are the coarse and from-scratch rounds 1 and round
0's test-time views (`--remeasure` re-runs them); the pipeline's members are, when their folders are
missing, since the later rounds start from their weights.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from src.artifacts import atomic_write_json, atomic_write_text
from src.config import Config, deep_merge, load_yaml, parse_overrides, validate_config
from src.decoding import load_predictions
from src.ensemble import decode_argmax, decode_bayes
from src.gates import avgk_set_size_gate, coarse_agreement, compare_gates, fit_avgk_threshold, max_probability_gate
from src.run_files import METRICS_FILE, has_weights, is_done
from src.score import mean_distance, read_solution
from src.stages.pipeline_config import PipelineConfig, PseudoLabelConfig
from src.synthetic import error_profile as ep
from src.taxonomy import distance_matrix, load_taxonomy

PIPELINE_NAME = "selftrain"
COARSE_PIPELINE_NAME = "selftrain_coarse"  # its round_0 links to selftrain's
SCRATCH_PIPELINE_NAME = "selftrain_scratch"  # likewise
DWCE = {"name": "dwce", "dwce_weights": "team"}
ALL_DECODERS = ["argmax", "vote", "bayes", "bayes_cal", "diffusion", "frame_bayes", "frame_argmax"]


@dataclass(frozen=True)
class Variant:
    """A single-model variant of the recipe: a name, a description, its training-config overrides, and the
    variant it is compared with (paired by seed)."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict)
    against: str | None = None


VARIANTS = (  # the order is the study's priority: context and down-scaling before the loss variants
    Variant("ce", "CE", {"loss": {"name": "ce"}}),
    Variant("dwce_team", "DW-CE, team weights (D+I)/rowsum", {"loss": DWCE}, "ce"),
    Variant("hxe_0.3", "HXE, alpha 0.3", {"loss": {"name": "hxe", "hxe_alpha": 0.3}}, "ce"),
    Variant("dwce_ctx3", "DW-CE, ROI + 3x context crop", {"loss": DWCE, "data": {"views": ["roi", "ctx3"]}},
            "dwce_team"),
    Variant("dwce_downscale", "DW-CE + random down-scaling augmentation [0.25, 1], p 0.5",
            {"loss": DWCE, "augment": {"downscale": [0.25, 1.0], "downscale_p": 0.5}}, "dwce_team"),
    Variant("dwce_paper", "DW-CE, paper weights (D+1)/rowsum", {"loss": {"name": "dwce", "dwce_weights": "paper"}},
            "ce"),
    Variant("ce_expdist", "CE + 0.1 x expected distance", {"loss": {"name": "ce_expdist", "expdist_lambda": 0.1}},
            "ce"),
    Variant("soft_labels", "soft labels softmax(-D[i])", {"loss": {"name": "soft_labels", "soft_beta": 1.0}}, "ce"),
    Variant("dwce_frame", "DW-CE, ROI + full frame", {"loss": DWCE, "data": {"views": ["roi", "frame"]}},
            "dwce_team"),
    Variant("hxe_0.1", "HXE, alpha 0.1", {"loss": {"name": "hxe", "hxe_alpha": 0.1}}, "ce"),
    Variant("hxe_0.5", "HXE, alpha 0.5", {"loss": {"name": "hxe", "hxe_alpha": 0.5}}, "ce"),
    Variant("dwce_fierce", "DW-CE + FIERCE, lambda 0.1", {"loss": {**DWCE, "fierce_lambda": 0.1}}, "dwce_team"),
    Variant("dwce_avgk", "DW-CE + average-K set head (K 2) on detached features",
            {"loss": DWCE, "model": {"avgk_head": True, "avgk_detach": True}}, "dwce_team"),
    Variant("dwce_avgk_joint", "DW-CE + average-K set head (K 2), its BCE training the backbone too",
            {"loss": DWCE, "model": {"avgk_head": True, "avgk_detach": False}}, "dwce_team"),
)
LEDGER = Path(__file__).resolve().with_name("accuracy_ledger.json")
BASE_VARIANT = "dwce_team"  # its pipeline seeds are the self-training pipeline's round 0
ENSEMBLE_SIZES = (3, 5, 8)
FULL_FIRST = ("dwce_ctx3", "dwce_downscale")  # questions 5 and 6: every seed before the other variants' first
TTA_VIEWS = ("identity", "hflip", "down75")  # test-time views predicted for round 0's members


@dataclass
class Plan:
    """Everything a benchmark run needs; the recipe tree is shared by every variant."""

    root: Path
    out: Path
    seeds: list[int]
    epochs: int | None  # None: the recipe's
    rounds: int
    min_votes: int
    train_config: str
    recipe_overrides: dict
    variants: tuple = VARIANTS
    u_threshold: float = 0.0
    warm_epochs: int = 5
    ensemble_seeds: list[int] = field(default_factory=list)  # more base-variant seeds for larger ensembles
    variant_seeds: list[int] | None = None  # seeds of the variants (default: seeds)
    ledger: Path | None = None  # committed figures of earlier checkouts (merge_ledger); None: this checkout only

    @property
    def solution(self) -> Path:
        return self.root / "solution.csv"

    def recipe(self) -> dict:
        """train_overrides shared by every run: the recipe overrides, quiet output, and epochs if set."""
        tree = deep_merge(self.recipe_overrides, {"train": {"progress": False}})
        return deep_merge(tree, {"train": {"epochs": self.epochs}}) if self.epochs else tree

    def pipeline(self) -> PipelineConfig:
        base = next(v for v in self.variants if v.name == BASE_VARIANT)
        return PipelineConfig(
            name=PIPELINE_NAME, train_config=self.train_config, train_overrides=deep_merge(self.recipe(), base.overrides),
            data_root=str(self.root), solution=str(self.solution), seeds=self.seeds, split_seed=0,
            rounds=self.rounds, warm_start=True,
            warm_start_overrides={"train": {"epochs": self.warm_epochs}, "optim": {"warmup_epochs": 0}},
            pseudo={"min_votes": self.min_votes, "u_threshold": self.u_threshold},
            decoding={"decoders": ALL_DECODERS}, output_root=str(self.out / "pipeline"),
            submissions_dir=str(self.out / "submissions"))

    def coarse_pipeline(self) -> PipelineConfig:
        """Round 1 of the pipeline again, with coarse pseudo-labels (pseudo.coarse) from the same round 0."""
        pipe = self.pipeline()
        return pipe.model_copy(update={"name": COARSE_PIPELINE_NAME, "rounds": 1,
                                       "pseudo": pipe.pseudo.model_copy(update={"coarse": True})})

    def scratch_pipeline(self) -> PipelineConfig:
        """Round 1 of the pipeline again, its members trained from scratch (the recipe's epochs) on the same
        pseudo-labels: warm vs scratch, and the pseudo-labels' effect without the warm start's extra epochs."""
        return self.pipeline().model_copy(update={"name": SCRATCH_PIPELINE_NAME, "rounds": 1, "warm_start": False})

    def side_pipelines(self) -> dict[str, PipelineConfig]:
        """The round-1 alternatives that start from the pipeline's round 0, by their section in the results."""
        return {"coarse_round_1": self.coarse_pipeline(), "scratch_round_1": self.scratch_pipeline()}

    @property
    def tta_file(self) -> Path:
        return self.out / "tta" / "round_0_test.npz"

    def seeds_of(self, variant: str) -> list[int]:
        seeds = list(self.variant_seeds if self.variant_seeds is not None else self.seeds)
        if variant == BASE_VARIANT:
            seeds = list(dict.fromkeys([*self.seeds, *seeds, *self.ensemble_seeds]))
        return seeds

    def run_dir(self, variant: str, seed: int) -> Path:
        if variant == BASE_VARIANT and seed in self.seeds:
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


# ------------------------------------------------------------------------------------------- metrics
def label_metrics(decoded: dict[str, np.ndarray], truth: np.ndarray, D: np.ndarray) -> dict:
    """<decoder>_distance, <decoder>_accuracy and <decoder>_distinct (labels used) of each decoder's labels."""
    out = {}
    for name, pred in decoded.items():
        out[f"{name}_distance"] = mean_distance(truth, pred, D)
        out[f"{name}_accuracy"] = float((truth == pred).mean())
        out[f"{name}_distinct"] = int(len(np.unique(pred)))
    return out


def decode_metrics(probs: np.ndarray, truth: np.ndarray, D: np.ndarray) -> dict:
    """Mean distance, accuracy and distinct labels of argmax and Bayes decoding of (N, C) probabilities."""
    return label_metrics({"argmax": decode_argmax(probs), "bayes": decode_bayes(probs, D)}, truth, D)


class TestSet:
    """The test split's truth and box sizes, looked up by annotation id."""

    def __init__(self, root: Path, taxonomy):
        self.root, self.taxonomy = root, taxonomy
        coco = json.loads((root / "dataset_test.json").read_text())
        self.long_side = pd.Series({a["id"]: max(a["bbox"][2:]) for a in coco["annotations"]})
        self._truth: dict = {}

    def truth(self, annotation_id: np.ndarray) -> np.ndarray:
        key = annotation_id.tobytes()
        if key not in self._truth:
            self._truth[key] = read_solution(self.root / "solution.csv", annotation_id, self.taxonomy)
        return self._truth[key]

    def size_quarters(self, annotation_id: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> dict:
        """Accuracy per quarter of the test box long side (q1: smallest)."""
        by_size = ep.accuracy_by_size(truth, pred, self.long_side.loc[annotation_id].to_numpy())
        return {f"acc_{q}": by_size[q] for q in ("q1", "q2", "q3", "q4") if q in by_size}


def run_metrics(run_dir: Path, test: TestSet, D: np.ndarray, pipe: PipelineConfig | None = None) -> dict:
    """Test metrics of one finished run (head-mean probabilities): argmax and Bayes, and with `pipe` also the
    frame decoders and calibrated Bayes fitted on the run's own validation predictions (as `submit` does for
    a one-member ensemble); its validation accuracy, epochs and time."""
    preds = load_predictions([run_dir], "test", test.taxonomy)
    truth = test.truth(preds.annotation_id)
    metrics = decode_metrics(preds.mean, truth, D)
    if pipe is not None:
        from src.stages.submit import evaluate_members

        evaluation = evaluate_members(pipe, [run_dir])
        for name in ("bayes_cal", "frame_bayes", "frame_argmax"):
            if name in evaluation.test:
                metrics[f"{name}_distance"] = evaluation.test[name]
                metrics[f"{name}_accuracy"] = evaluation.test_accuracy[name]
    metrics.update(test.size_quarters(preds.annotation_id, truth, decode_argmax(preds.mean)))
    val = load_predictions([run_dir], "val", test.taxonomy)
    if val is not None and val.labels is not None:
        metrics["val_accuracy"] = float((decode_argmax(val.mean) == val.labels).mean())
    if preds.set_scores is not None and val is not None and val.set_scores is not None:
        metrics["set_gates"] = set_size_gates(preds.mean, preds.set_scores[0], val.set_scores[0], truth, D)
    history = run_dir / METRICS_FILE
    if history.is_file():
        frame = pd.read_csv(history)
        metrics["train_seconds"] = float(frame["epoch_seconds"].sum())
        metrics["epochs"] = int(frame["epoch"].max())
    return metrics


def set_size_gates(probs: np.ndarray, set_scores: np.ndarray, val_set_scores: np.ndarray, truth: np.ndarray,
                   D: np.ndarray, k: float = PseudoLabelConfig().avgk_k,
                   max_set_size: int = PseudoLabelConfig().max_set_size) -> list[dict]:
    """A model with the average-K set head as its own pseudo-label gate: the set-size gate (threshold fitted so
    validation sets average k concepts; accepted when the set holds 1 to max_set_size; defaults: the
    pipeline's) against the max-probability gate of the same probabilities, at equal coverage
    (`compare_gates` rows)."""
    threshold = fit_avgk_threshold(val_set_scores, k)
    gates = {"max_prob": max_probability_gate(probs, 0.0),
             "avgk_set_size": avgk_set_size_gate(probs, set_scores, threshold, max_set_size)}
    return compare_gates(gates, truth, D)


def ensemble_metrics(pipe: PipelineConfig, members: list[Path], test: TestSet, r: int = 0) -> dict:
    """Every decoder of the pipeline (argmax, vote, Bayes, calibrated Bayes, diffusion, frame decoders, their
    parameters fitted on the members' validation predictions) on the ensemble of `members`."""
    from src.stages.submit import evaluate_members

    evaluation = evaluate_members(pipe, members, r)
    out = {"members": len(members), "temperature": evaluation.temperature, "frame_weights": evaluation.frame_weights}
    for name, labels in evaluation.test_labels.items():
        out[f"{name}_distance"] = evaluation.test[name]
        out[f"{name}_accuracy"] = evaluation.test_accuracy[name]
        out[f"{name}_distinct"] = evaluation.distinct[name]
    truth = test.truth(evaluation.test_ids)
    out.update(test.size_quarters(evaluation.test_ids, truth, evaluation.test_labels["argmax"]))
    return out


def frame_aware_gates(pipe: PipelineConfig, members: list[Path], test: TestSet, D: np.ndarray) -> list[dict]:
    """Every pseudo-label gate at equal coverage on the members' frame-aware distributions (pseudo.frame_aware)."""
    from src.gates import compare_gates
    from src.stages.predictions import load_round
    from src.stages.pseudo_label import gate_inputs

    loaded = load_round(pipe, members, test.taxonomy, ["frame_bayes"])
    preds, _, _, _, gates = gate_inputs(pipe, loaded, D, len(test.taxonomy), True)
    return compare_gates(gates, test.truth(preds.annotation_id), D)


def subset_distances(member_probs: np.ndarray, truth: np.ndarray, D: np.ndarray, k: int) -> dict[str, list[float]]:
    """Argmax and Bayes test distance of the mean of the members' (M, N, C) probabilities over every k-subset
    of the M members, in itertools.combinations order: how much the choice of seeds moves an ensemble of k."""
    out = {"argmax": [], "bayes": []}
    for subset in itertools.combinations(range(len(member_probs)), k):
        probs = member_probs[list(subset)].mean(axis=0)
        out["argmax"].append(mean_distance(truth, decode_argmax(probs), D))
        out["bayes"].append(mean_distance(truth, decode_bayes(probs, D), D))
    return out


def ensemble_subsets(members: list[Path], test: TestSet, D: np.ndarray) -> dict:
    """subset_distances of the finished base-variant seeds for every size below their count and the whole set,
    summarised (mean, sample std, min, max, number of subsets): the spread beside the first-k-seeds rows."""
    preds = load_predictions(members, "test", test.taxonomy)
    probs = np.stack([m.mean(axis=0) for m in preds.members])
    truth = test.truth(preds.annotation_id)
    out = {}
    for k in sorted({1, *(k for k in ENSEMBLE_SIZES if k < len(members)), len(members)}):
        figures = subset_distances(probs, truth, D, k)
        out[str(k)] = {name: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                              "min": float(np.min(v)), "max": float(np.max(v)), "subsets": len(v)}
                       for name, v in figures.items()}
    return {"members": len(members), "sizes": out}


def coarse_metrics(members: list[Path], test: TestSet, min_votes: int) -> dict:
    """Coarse pseudo-labels from an ensemble's test predictions: ROIs where >= min_votes members agree on the
    concept (exact pseudo-labels) and, among the others, where they agree only on a genus, family or order
    (set targets); coverage and precision of each (a set target is right when the truth lies under its taxon)."""
    preds = load_predictions(members, "test", test.taxonomy)
    truth = test.truth(preds.annotation_id)
    labels = np.stack([m.mean(axis=0).argmax(axis=1) for m in preds.members])
    agreed = coarse_agreement(labels, test.taxonomy, min_votes)
    exact = agreed.rank == "concept"
    out = {"exact_coverage": float(exact.mean()),
           "exact_precision": float((test.taxonomy.indices(agreed.name[exact]) == truth[exact]).mean())
           if exact.any() else None}
    for rank in ("genus", "family", "order"):
        rows = agreed.rank == rank
        out[f"{rank}_coverage"] = float(rows.mean())
        out[f"{rank}_precision"] = float(agreed.mask[rows, truth[rows]].mean()) if rows.any() else None
    return out


def pseudo_stats(pipe: PipelineConfig, r: int) -> dict | None:
    """The figures of round r's pseudo_label stats.json the report uses (None before the stage ran)."""
    stats = pipe.layout.round_dir(r) / "stats.json"
    if not stats.is_file():
        return None
    s = json.loads(stats.read_text())
    return {k: s.get(k) for k in ("count", "coverage", "accuracy", "mean_distance", "min_votes", "u_threshold",
                                  "added", "dropped", "changed", "curves", "gates_at_equal_coverage",
                                  "votes_histogram", "coarse_count", "coarse_by_rank", "coarse_precision")}


def predict_tta(plan: Plan) -> Path:
    """Round 0's members' test probabilities for every view of TTA_VIEWS (src.predict, as `predict --tta`)."""
    from src.inference import predict_ensemble, save_ensemble_probs

    members = [plan.pipeline().layout.member_dir(0, s) for s in plan.seeds]
    preds = predict_ensemble(members, plan.root / "dataset_test.json", plan.root / "cache",
                             images_dir=plan.root / "test" / "images", progress=False, tta_views=TTA_VIEWS)
    plan.tta_file.parent.mkdir(parents=True, exist_ok=True)
    return save_ensemble_probs(plan.tta_file, preds, load_taxonomy().names)


def tta_metrics(path: Path, test: TestSet, D: np.ndarray) -> dict:
    """Argmax and Bayes test metrics of the members (mean over them) and of their ensemble, for the test-time
    views identity, + hflip, + down-scaled (each probability the mean over the views used)."""
    with np.load(path) as z:
        ids, views, view_means = z["annotation_id"], [str(v) for v in z["views"]], z["view_means"]  # (M, T, N, C)
    truth = test.truth(ids)
    out = {}
    for k in range(1, len(views) + 1):
        probs = view_means[:, :k].mean(axis=1)  # (M, N, C)
        key = "+".join(views[:k])
        members = [decode_metrics(p, truth, D) for p in probs]
        out[key] = {"members": {m: float(np.mean([x[m] for x in members])) for m in members[0]},
                    "ensemble": decode_metrics(probs.mean(axis=0), truth, D)}
    return out


def collect(plan: Plan) -> dict:
    """Every metric computable from the finished runs under plan.out (nothing is trained here), completed by
    plan.ledger's figures of runs this checkout has not (re)measured."""
    fresh = collect_fresh(plan)
    if plan.ledger is None or not plan.ledger.is_file():
        return fresh
    return merge_ledger(fresh, json.loads(plan.ledger.read_text()))


LEDGER_IDENTITY = ("generator_version", "root", "seeds", "epochs", "min_votes", "u_threshold", "warm_epochs", "train_config", "recipe")
LEDGER_SECTIONS = ("ensemble_rounds", "pseudo_labels", "ensemble_sizes")  # keyed by round or ensemble size
LEDGER_WHOLE = ("coarse", "coarse_round_1", "scratch_round_1", "tta", "frame_aware_gates",
                "ensemble_subsets")  # one figure set each


def generator_version(root: Path) -> int | None:
    """The generator version that wrote the benchmark at root (its generator.json); None for other data. Figures
    of an earlier generator's data are never merged with this one's: the data differ."""
    meta = Path(root) / "generator.json"
    return json.loads(meta.read_text()).get("generator_version") if meta.is_file() else None


def study_identity(plan: Plan) -> dict:
    """What makes two collections figures of the same study (LEDGER_IDENTITY), as collect_fresh writes it."""
    return {"generator_version": generator_version(plan.root), "root": str(plan.root), "seeds": plan.seeds, "epochs": plan.epochs, "min_votes": plan.min_votes,
            "u_threshold": plan.u_threshold, "warm_epochs": plan.warm_epochs, "train_config": plan.train_config,
            "recipe": plan.recipe()}


def same_study(ledger: dict, fresh: dict) -> bool:
    return all(ledger.get(k) == fresh.get(k) for k in LEDGER_IDENTITY)


def study_ledger(plan: Plan) -> dict:
    """plan.ledger's figures when they are of this study; {} without a ledger or for another study."""
    if plan.ledger is None or not plan.ledger.is_file():
        return {}
    ledger = json.loads(plan.ledger.read_text())
    return ledger if same_study(ledger, study_identity(plan)) else {}


def ledgered_runs(plan: Plan) -> set[tuple[str, int]]:
    """(variant, seed) of the single runs whose figures plan.ledger holds for this study (none without one)."""
    return {(name, int(seed)) for name, entry in study_ledger(plan).get("single", {}).items()
            for seed in entry["runs"]}


def merge_ledger(fresh: dict, ledger: dict) -> dict:
    """`fresh` completed by the ledger's single runs (by variant and seed), rounds, ensemble sizes and other
    sections that `fresh` lacks; fresh figures win. A ledger of another study (its LEDGER_IDENTITY differs)
    adds nothing. `ledger_only` names what came from the ledger: measured in an earlier checkout whose run
    folders are not here (the study's outputs/ is not committed; the ledger is)."""
    if not same_study(ledger, fresh):
        return fresh
    out = json.loads(json.dumps(fresh))
    kept = []
    order = list(fresh["variants"])
    for name, entry in ledger.get("single", {}).items():
        if name not in fresh["variants"]:
            continue  # a variant this study no longer has
        target = out["single"].setdefault(name, {**entry, "runs": {}})
        for seed, metrics in entry["runs"].items():
            if seed not in target["runs"]:
                target["runs"][seed] = metrics
                kept.append(f"{name} seed {seed}")
        target["runs"] = dict(sorted(target["runs"].items(), key=lambda kv: int(kv[0])))
    out["single"] = {n: out["single"][n] for n in order if n in out["single"]}
    for section in LEDGER_SECTIONS:
        merged = out.get(section) or {}
        for key, value in (ledger.get(section) or {}).items():
            if key not in merged:
                merged[key] = value
                kept.append(f"{section} {key}")
        out[section] = dict(sorted(merged.items(), key=lambda kv: int(kv[0])))
    for section in LEDGER_WHOLE:
        if out.get(section) is None and ledger.get(section) is not None:
            out[section] = ledger[section]
            kept.append(section)
    members = lambda c: (c.get("ensemble_subsets") or {}).get("members", 0)
    if members(ledger) > members(out):  # a checkout that has trained fewer of the extra seeds so far
        out["ensemble_subsets"] = ledger["ensemble_subsets"]
        kept.append("ensemble_subsets")
    out["ledger_only"] = kept
    return out


def collect_fresh(plan: Plan) -> dict:
    """Every metric computable from the finished runs under plan.out."""
    taxonomy = load_taxonomy()
    D = distance_matrix(taxonomy)
    test = TestSet(plan.root, taxonomy)
    pipe = plan.pipeline()
    singles = {}
    for v in plan.variants:
        runs = {seed: run_metrics(plan.run_dir(v.name, seed), test, D, pipe)
                for seed in plan.seeds_of(v.name) if is_done(plan.run_dir(v.name, seed))}
        if runs:
            singles[v.name] = {"label": v.label, "against": v.against, "overrides": v.overrides,
                               "runs": {str(s): m for s, m in runs.items()}}
    pipe = plan.pipeline()
    rounds, pseudo = {}, {}
    for r in range(plan.rounds + 1):
        members = [pipe.layout.member_dir(r, s) for s in plan.seeds]
        if all(is_done(m) for m in members):
            rounds[str(r)] = ensemble_metrics(pipe, members, test, r)
            rounds[str(r)]["member_runs"] = {str(s): run_metrics(m, test, D) for s, m in zip(plan.seeds, members)}
        if (stats := pseudo_stats(pipe, r)) is not None:
            pseudo[str(r)] = stats
    side_rounds = {}
    for section, side in plan.side_pipelines().items():
        side_members = [side.layout.member_dir(1, s) for s in plan.seeds]
        side_rounds[section] = None
        if all(is_done(m) for m in side_members):
            side_rounds[section] = {**ensemble_metrics(side, side_members, test, 1), "pseudo_labels": pseudo_stats(side, 1),
                                    "member_runs": {str(s): run_metrics(m, test, D) for s, m in zip(plan.seeds, side_members)}}
    base_dirs = [plan.run_dir(BASE_VARIANT, s) for s in plan.seeds_of(BASE_VARIANT)]
    finished = len(list(itertools.takewhile(is_done, base_dirs)))  # an ensemble of k: the first k seeds
    sizes = {str(k): ensemble_metrics(pipe, base_dirs[:k], test) for k in ENSEMBLE_SIZES if finished >= k}
    subsets = ensemble_subsets(base_dirs[:finished], test, D) if finished > len(plan.seeds) else None
    coarse = coarse_metrics(base_dirs[:len(plan.seeds)], test, plan.min_votes) if finished >= len(plan.seeds) else None
    tta = tta_metrics(plan.tta_file, test, D) if plan.tta_file.is_file() else None
    round0 = [pipe.layout.member_dir(0, s) for s in plan.seeds]
    frame_gates = frame_aware_gates(pipe, round0, test, D) if all(is_done(m) for m in round0) else None
    return {**study_identity(plan), "ledger": str(plan.ledger) if plan.ledger else None, "rounds": plan.rounds,
            "ensemble_seeds": plan.ensemble_seeds, "variant_seeds": plan.variant_seeds,
            "recipe_overrides": plan.recipe_overrides,
            "variants": {v.name: {"label": v.label, "overrides": v.overrides, "against": v.against}
                         for v in plan.variants},
            "test_rois": int(len(test.long_side)), "single": singles, "ensemble_rounds": rounds,
            "pseudo_labels": pseudo, "ensemble_sizes": sizes, "ensemble_subsets": subsets, "coarse": coarse, **side_rounds,
            "tta": tta, "frame_aware_gates": frame_gates}


# ------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Job:
    """One unit of the study: what it does, whether it is finished, and whether it can start yet (a round's
    members wait for its pseudo-labels, which wait for the previous round's members)."""

    name: str
    action: Callable[[], object]
    done: Callable[[], bool]
    ready: Callable[[], bool] = lambda: True
    variant: str | None = None  # a single-model run's variant name


def round_jobs(pipe: PipelineConfig, r: int, title: str, before: Callable[[], None] | None = None,
               previous: PipelineConfig | None = None) -> list[Job]:
    """Round r (>= 1) of `pipe`: its pseudo-labels (after `before`, once round r-1 of `previous`, default
    `pipe`, is finished), then one job per member, so that two processes train a round's members in parallel."""
    from src.stages.pseudo_label import make_pseudo_labels
    from src.stages.retrain import retrain

    layout = pipe.layout
    stats = layout.round_dir(r) / "stats.json"  # written last by make_pseudo_labels
    previous_done = lambda: all(is_done((previous or pipe).layout.member_dir(r - 1, s)) for s in pipe.seeds)
    out = [Job(f"{title} pseudo-labels", lambda: (before and before(), make_pseudo_labels(pipe, r)),
               stats.is_file, previous_done)]
    for i, seed in enumerate(pipe.seeds):
        out.append(Job(f"{title} member seed {seed}", lambda i=i: retrain(pipe, r, member_index=i),
                       lambda seed=seed: is_done(layout.member_dir(r, seed)), stats.is_file))
    return out


def jobs(plan: Plan, part: str = "all", remeasure: bool = False, only: list[str] | None = None) -> list[Job]:
    """Jobs in priority order: the pipeline's round-0 members, the self-training round 1 and its alternatives
    from the same round 0 (coarse pseudo-labels; members from scratch), the HXE and CE references and the
    FULL_FIRST variants on every seed, round 0's test-time views, the later rounds, one seed of every other variant, the other variants' other seeds, then the extra ensemble seeds.

    part 'variants': the single-model variants only; 'all': everything (two processes share the list through
    claim files). A single run whose figures the ledger holds counts as done unless `remeasure` (a pipeline
    member never does: later rounds need its weights); nor do the alternative rounds 1 and round 0's test-time
    views when the ledger holds their figures (nothing trains from them).

    `only`: of the single runs, just those of these variants (the extra ensemble seeds are the base variant's),
    in the same passes (one seed of each, then the other seeds) but in `only`'s order within a pass (for
    spending a short session on the closest comparisons); part 'all' keeps the pipeline's jobs before them."""
    from src.stages.train_ensemble import train_ensemble
    from src.train import train

    pipe = plan.pipeline()
    layout = pipe.layout
    round0_done = lambda: all(is_done(layout.member_dir(0, s)) for s in plan.seeds)

    measured = set() if remeasure else ledgered_runs(plan)
    # Leaves (nothing trains from them) whose figures the ledger holds are not run again either.
    held = {} if remeasure else study_ledger(plan)

    def single(v: Variant, s: int) -> Job:
        return Job(f"{v.name} seed {s}", lambda: train(plan.config(v, s)),
                   lambda: (v.name, s) in measured or is_done(plan.run_dir(v.name, s)), variant=v.name)

    others = [v for v in plan.variants if v.name != BASE_VARIANT]
    references = [v for v in others if v.name in ("hxe_0.3", "ce")]
    references.sort(key=lambda v: v.name != "hxe_0.3")  # HXE is new to the study; CE was measured before
    rest_variants = [v for v in others if v not in references]
    references += [v for v in rest_variants if v.name in FULL_FIRST]
    rest_variants = [v for v in rest_variants if v.name not in FULL_FIRST]
    refs = [single(v, s) for v in references for s in plan.seeds_of(v.name)]
    first = [single(v, plan.seeds_of(v.name)[0]) for v in rest_variants if plan.seeds_of(v.name)]
    rest = [single(v, s) for s in plan.seeds_of(rest_variants[0].name)[1:] for v in rest_variants] if rest_variants else []
    base_extra = [single(next(v for v in plan.variants if v.name == BASE_VARIANT), s)
                  for s in plan.seeds_of(BASE_VARIANT) if s not in plan.seeds]
    if only is not None:
        chosen = lambda group: sorted((j for j in group if j.variant in only), key=lambda j: only.index(j.variant))
        refs, first, rest, base_extra = (chosen(group) for group in (refs, first, rest, base_extra))
    if part == "variants":
        return refs + first + rest + base_extra
    round0 = [Job(f"round 0 (DW-CE team) member seed {s}", lambda i=i: train_ensemble(pipe, member_index=i),
                  lambda s=s: is_done(layout.member_dir(0, s))) for i, s in enumerate(plan.seeds)]
    tta = Job("test-time views of round 0", lambda: predict_tta(plan), plan.tta_file.is_file, round0_done)
    rounds = [round_jobs(pipe, r, f"self-training round {r}") for r in range(1, plan.rounds + 1)]
    titles = {"coarse_round_1": "coarse self-training round 1", "scratch_round_1": "from-scratch self-training round 1"}
    side = [job for section, side_pipe in plan.side_pipelines().items() if held.get(section) is None
            for job in round_jobs(side_pipe, 1, titles[section], lambda side_pipe=side_pipe: link_round_0(plan, side_pipe),
                                  previous=pipe)]  # its round 0 is a link to pipe's, made by the first job
    tta = [] if held.get("tta") is not None else [tta]
    early = (rounds[0] + side) if rounds else []
    later = [j for jobs_of_round in rounds[1:] for j in jobs_of_round]
    return round0 + early + refs + tta + later + first + rest + base_extra


def link_round_0(plan: Plan, side: PipelineConfig) -> None:
    """A side pipeline's round 0 is the pipeline's (a link, not a copy), so its round 1 starts from the same
    members and the alternatives are compared on equal terms."""
    link = side.layout.round_dir(0)
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(plan.pipeline().layout.round_dir(0), link.parent), target_is_directory=True)


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


def run(plan: Plan, deadline: float | None = None, part: str = "all", shared: bool = False,
        remeasure: bool = False, only: list[str] | None = None) -> dict:
    """Run every unfinished job, each time the first in priority order that can start (stopping before one
    would start after `deadline`, a time.time()); rewrite OUT/accuracy.json after each. With `shared`, jobs
    another process claimed are left to it, and a job that waits for another process's (a round's members
    for its pseudo-labels, those for the previous round) is taken as soon as it is ready, before any later
    job. Returns the final collection."""
    plan.out.mkdir(parents=True, exist_ok=True)
    todo = jobs(plan, part, remeasure, only)
    pending = list(enumerate(todo, 1))
    while pending:
        for k, (i, job) in enumerate(pending):
            name = job.name
            if job.done():
                print(f"[{i}/{len(todo)}] {name}: done, skipped", flush=True)
            elif deadline is not None and time.time() > deadline:
                print(f"[{i}/{len(todo)}] {name}: past the deadline, not started", flush=True)
                pending = []
                break
            elif shared and not job.ready():
                continue
            elif shared and not claim(plan, name):
                print(f"[{i}/{len(todo)}] {name}: claimed by another process, skipped", flush=True)
            else:
                start = time.time()
                print(f"[{i}/{len(todo)}] {name}: running", flush=True)
                job.action()
                print(f"[{i}/{len(todo)}] {name}: {time.time() - start:.0f} s", flush=True)
                save(plan, collect(plan))
            del pending[k]
            break  # look again from the top: an earlier job may be ready now
        else:
            time.sleep(30)  # every pending job waits for what another process trains
    result = collect(plan)
    save(plan, result)
    return result


def save(plan: Plan, result: dict) -> None:
    """OUT/accuracy.json and, when the plan has one, the ledger (both atomically)."""
    atomic_write_json(plan.out / "accuracy.json", result)
    if plan.ledger is not None:
        atomic_write_json(plan.ledger, {k: v for k, v in result.items() if k not in ("ledger_only", "ledger")})


def build_plan(args: argparse.Namespace) -> Plan:
    return Plan(root=Path(args.root), out=Path(args.out), seeds=list(args.seeds), epochs=args.epochs,
                rounds=args.rounds, min_votes=args.min_votes, train_config=args.train_config,
                recipe_overrides=parse_overrides(args.set), u_threshold=args.u_threshold,
                warm_epochs=args.warm_epochs, ensemble_seeds=list(args.ensemble_seeds),
                variant_seeds=list(args.variant_seeds) if args.variant_seeds else None,
                ledger=Path(args.ledger) if args.ledger else None)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="outputs/realism/bench_g0",
                        help="dataset folder with solution.csv (default: bench.realism's generator seed 0)")
    parser.add_argument("--out", default="outputs/bench/accuracy", help="runs and accuracy.json go here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="the pipeline's members (and every variant's seeds unless --variant-seeds)")
    parser.add_argument("--variant-seeds", type=int, nargs="+", help="seeds of the single-model variants")
    parser.add_argument("--ensemble-seeds", type=int, nargs="*", default=[3, 4, 5, 6, 7],
                        help="more DW-CE seeds for the 5- and 8-member ensembles (trained last)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the recipe's)")
    parser.add_argument("--rounds", type=int, default=3, help="self-training rounds after the initial ensemble")
    parser.add_argument("--warm-epochs", type=int, default=5, help="epochs of a warm-started self-training member")
    parser.add_argument("--min-votes", type=int, default=3, help="pseudo-label gate: members that must agree")
    parser.add_argument("--u-threshold", type=float, default=0.0, help="pseudo-label gate: ensemble U at least")
    parser.add_argument("--train-config", default="cfg/reference_ce.yaml", help="recipe YAML")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides for every run")
    parser.add_argument("--ledger", default=str(LEDGER), help="committed figures of every run measured so far, in "
                        "any checkout: read to complete the tables, rewritten after every job ('' for none; "
                        f"default {LEDGER.relative_to(LEDGER.parents[1])})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(parser)
    parser.add_argument("--deadline", help="UTC time HH:MM after which no new job starts")
    parser.add_argument("--part", choices=("all", "variants"), default="all",
                        help="'all': the pipeline's jobs first, then the single models; 'variants': the single "
                        "models only (two processes of 'all' with --shared split every job)")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: rewrite accuracy.json and the ledger from the finished runs")
    parser.add_argument("--remeasure", action="store_true",
                        help="train the single runs, the coarse and from-scratch rounds 1 and the test-time views "
                             "whose figures the ledger already holds (default: skip them)")
    parser.add_argument("--only", nargs="+", metavar="VARIANT",
                        help="of the single-model runs, train just these variants' (with --part all: after the "
                             "pipeline's jobs; " + BASE_VARIANT + " names the extra ensemble seeds), this order "
                             "first within each pass over the seeds; valid: " + " ".join(v.name for v in VARIANTS))
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
    if args.collect:
        save(plan, collect(plan))
    else:
        if args.only:
            unknown = sorted(set(args.only) - {v.name for v in plan.variants})
            if unknown:
                parser.error(f"--only: unknown variants {unknown}; valid: {' '.join(v.name for v in plan.variants)}")
        run(plan, deadline, args.part, args.shared, args.remeasure, args.only)
    print(f"wrote {plan.out / 'accuracy.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
