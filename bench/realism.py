"""Does the generated benchmark put models where real FathomNet 2025 models are? Writes bench/REALISM.md.

    python -m bench.realism                       # bench preset, 3 generator seeds, 5 runs: about 50 min on 2 cores
    python -m bench.realism --gen-seeds 0 --model-seeds 0      # one run, a quick look

Two processes with one thread each use 2 cores better than one with two (45 min in all), and share the work folder:
    python -m bench.realism --gen-seeds 0 --set train.threads=1 --out outputs/realism/a.md &
    python -m bench.realism --gen-seeds 1 2 --model-seeds 0 --set train.threads=1 --out outputs/realism/b.md; wait
    python -m bench.realism --set train.threads=1      # reuses every run, writes bench/REALISM.md

It generates the preset for each generator seed (skipped when the folder already holds the same
generation), crops it with src.data.download, trains the reference recipe (cfg/reference_ce.yaml: plain
cross-entropy, one small Wide ResNet, argmax; never the method under study, so the calibration favours
no method) with 3 model seeds on the first generator seed and one model seed on the others, and compares
every figure of the real error profile (accuracy, error distances, where errors land in the taxonomy,
per-rank accuracy, item and frame difficulty, size, calibration, geometry) with the real competition
models' figures, with a verdict per band. Runs that finished are reused; a killed run resumes.

Context bands (REALISM section 4): on each generator seed it also trains the context twin
(cfg/reference_ctx.yaml: the same recipe with views ROI + 3x window + whole frame; one more run per
generator seed, --no-twin skips it) and fits linear probes (`context_probe`: logistic regression, C chosen
on held-out train frames, on colour histograms and 8x8 pixels of the ROI crop, of the 3x window with every
box masked, of the whole frame with every box masked). The twin must gain 0.4-1.0 mean distance over the reference, >= 10 points on the
smallest quarter of boxes and halve the size gap; the context alone must tell the phylum >= 10 points
better than the most common phylum while telling the concept less than half as well as the ROI crop.
After each twin, bench.context_diagnosis tells whether the twin or the generated context limits the gain.
    python -m bench.realism --probe-only --preset demo --seeds 0 1 2     # only the probes: minutes
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import REPO, git_commit, load_average
from bench.context_diagnosis import diagnosis_table, habitat_readout, view_reliance
from bench.runs import frame_habitats, run_probs, test_table
from src.artifacts import atomic_path, atomic_write_json, atomic_write_text
from src.config import Config, deep_merge, load_yaml, parse_overrides, validate_config
from src.runtime import cpu_model
from src.score import pair_distances
from src.synthetic import error_profile as ep
from src.synthetic.skeleton import load_skeleton
from src.taxonomy import distance_matrix, load_taxonomy

REFERENCE_CONFIG = REPO / "cfg" / "reference_ce.yaml"
TWIN_CONFIG = REPO / "cfg" / "reference_ctx.yaml"  # the same recipe with views roi + ctx3 + frame

# The real profile: competition models on the real 788 test ROIs (strong = 1st place plus four competitive
# entries, argmax), and the real test geometry. `band` is what a reference model on the generated test must
# reach (lo, hi); None where the figure is shown for comparison only.
CHECKS = (
    # key, label, real figure, band
    ("accuracy", "exact accuracy", "0.61-0.73 strong, 0.51-0.53 mid", (0.55, 0.68)),
    ("mean_distance", "mean distance", "1.56-2.73 strong, 3.36-3.58 mid", (2.2, 3.2)),
    ("error_distance", "mean distance of the errors", "5.6-7.1 strong", (5.5, None)),
    ("errors_within_2", "errors at distance <= 2", "11-17 % strong", (None, 0.20)),
    ("within_order", "errors inside the true order", "14-24 % strong", (None, 0.35)),
    ("within_phylum", "errors inside the true phylum", "44-63 % strong", (0.35, 0.63)),
    ("distinct_labels", "distinct labels predicted (of 79)", "78-79", (75, None)),
    ("val_minus_test", "validation minus test accuracy", "0.89 - 0.63 = 0.26", (0.12, None)),
    ("size_q3_minus_q1", "accuracy, 3rd minus 1st quarter of box size", "20-35 points (ROI-only)", (0.15, None)),
    ("species_minus_class", "accuracy of species minus class-level truths", "59-78 % vs 37-50 %", (0.01, None)),
    ("jaccard", "Jaccard overlap of two seeds' error sets", "0.45-0.69 (two strong models)", (0.40, 0.75)),
    ("all_wrong", "test ROIs wrong for all 3 seeds", "15-17 % (all strong models)", (0.08, None)),
    ("frame_clustering", "error rate given a wrong sibling / base rate", "1.2-1.6x", (1.15, None)),
    ("rois_per_frame", "ROIs per test frame", "2.42", (2.42 * 0.75, 2.42 * 1.25)),
    ("single_taxon_frames", "single-taxon test frames", "74 %", (0.74 * 0.75, 0.74 * 1.25)),
    ("rel_q25", "box long side / frame long side, q25", "0.029", (0.029 * 0.75, 0.029 * 1.25)),
    ("rel_median", "box long side / frame long side, median", "0.041", (0.041 * 0.75, 0.041 * 1.25)),
    ("rel_q75", "box long side / frame long side, q75", "0.066", (0.066 * 0.75, 0.066 * 1.25)),
    ("size_spearman", "per-class median box size / frame size vs real (Spearman)", "1", (0.6, None)),
)
# Context (REALISM section 4; the competition's ablation: ROI only 2.65 -> ROI + 3x + 5x 2.12 -> + frame 2.05
# mean distance, and context models keep 71-76 % accuracy on boxes < 32 px where ROI-only models fall to ~52 %):
# the context twin (cfg/reference_ctx.yaml) against the reference, and linear probes of the context alone.
CONTEXT_CHECKS = (
    ("ctx_distance_gain", "mean distance, reference minus context twin", "0.5-0.6 (2.65 -> 2.05-2.12)", (0.4, 1.0)),
    ("ctx_small_gain", "accuracy on the smallest quarter of boxes, twin minus reference",
     "~20 points (0.71-0.76 vs ~0.52 below 32 px)", (0.10, None)),
    ("ctx_size_gap_ratio", "size gap (q3 - q1): twin / reference", "nearly flat vs 20-35 points", (None, 0.5)),
    ("probe_phylum_over_majority", "context-alone probe: phylum accuracy minus most common phylum",
     "habitat tells the phylum", (0.10, None)),
    ("probe_concept_ratio", "context-alone probe: concept accuracy / ROI probe's", "habitat hardly tells the concept",
     (None, 0.5)),
)
# Figures shown side by side without a band (REALISM sections 1-4).
DETAIL_LABELS = {
    "within_genus": "errors inside the true genus", "within_family": "errors inside the true family",
    "within_class": "errors inside the true class", "kingdom_only": "errors sharing only the kingdom",
    "lateral": "lateral errors", "too_coarse": "too coarse (an ancestor of the truth)",
    "too_fine": "too fine (a descendant of the truth)",
    "rank_phylum": "right phylum", "rank_class": "right class", "rank_order": "right order",
    "rank_family": "right family", "rank_genus": "right genus", "rank_species": "right species",
    "truth_class": "accuracy, class-level truths", "truth_genus": "accuracy, genus-level truths",
    "truth_species": "accuracy, species-level truths", "class_acc_median": "per-class accuracy, median",
    "class_acc_q25": "per-class accuracy, q25", "class_acc_min": "per-class accuracy, worst class",
    "classes_at_least_0.9": "classes with accuracy >= 0.9", "both_wrong_same_label": "both wrong: same wrong label",
    "all_agree_coverage": "all seeds agree: coverage", "all_agree_precision": "all seeds agree: precision",
    "px_0_32": "accuracy, boxes < 32 px (real-frame px)", "px_128_256": "accuracy, boxes 128-256 px",
    "cal_p_0_0.5": "accuracy when max prob < 0.5", "cal_p_0.5_0.8": "accuracy when max prob 0.5-0.8",
    "cal_p_0.8_0.95": "accuracy when max prob 0.8-0.95", "val_accuracy": "validation (in-distribution) accuracy",
}
REAL_DETAIL = {
    "within_genus": "3-7 %", "within_family": "6-11 %", "within_class": "30-45 %", "kingdom_only": "37-56 %",
    "lateral": "70-82 %", "too_coarse": "9-24 %", "too_fine": "4-11 %",
    "rank_phylum": "80-90 %", "rank_class": "73-86 %", "rank_order": "68-84 %", "rank_family": "64-80 %",
    "rank_genus": "64-81 %", "rank_species": "59-78 %",
    "truth_class": "37-50 %", "truth_genus": "68-79 %", "truth_species": "59-78 %",
    "class_acc_median": "60-80 %", "class_acc_q25": "40-60 %", "class_acc_min": "~0 %",
    "classes_at_least_0.9": "15-29",
    "both_wrong_same_label": "35-46 %", "all_agree_coverage": "56 % (5/5 of 5 seeds)",
    "all_agree_precision": "85 % (5/5 of 5 seeds)",
    "px_0_32": "~0.52", "px_128_256": "~0.82",
    "cal_p_0_0.5": "30 %", "cal_p_0.5_0.8": "60 %", "cal_p_0.8_0.95": "88 %",
    "val_accuracy": "0.89",
}
REAL_GEOMETRY = {"rois_per_frame": 2.42, "rois_per_frame_median": 1, "rois_per_frame_p90": 5, "rois_per_frame_max": 23,
                 "single_roi_frames": 0.53, "taxa_per_frame": 1.38, "single_taxon_frames": 0.74,
                 "rois_in_single_taxon_frames": 0.51, "rel_q25": 0.029, "rel_median": 0.041, "rel_q75": 0.066,
                 "aspect_median": 1.32, "size_spearman_px": 1.0}
# Real error placement (strong models; share of errors inside the true taxon), for the plot.
REAL_PLACEMENT = {"genus": (0.03, 0.07), "family": (0.06, 0.11), "order": (0.14, 0.24), "class": (0.30, 0.45),
                  "phylum": (0.44, 0.63)}


# ------------------------------------------------------------------------------------------- data
def generate_data(work: Path, preset: str, seed: int, progress: bool) -> Path:
    """The generated data set of one generator seed (reused when it is the same generation)."""
    from src.synthetic.generator import generate_benchmark, generator_record

    root = work / f"{preset}_g{seed}"
    record = json.loads((root / "generator.json").read_text()) if (root / "generator.json").is_file() else None
    if record != generator_record(preset, seed):
        for sub in ("train", "test"):  # crops of an older generation
            shutil.rmtree(root / sub, ignore_errors=True)
        generate_benchmark(root, preset, seed, progress=progress)
    return root


def prepare_data(work: Path, preset: str, seed: int, progress: bool) -> Path:
    """The generated, cropped data set of one generator seed (reused when it is the same generation)."""
    from src.data.download import download_split

    root = generate_data(work, preset, seed, progress)
    for split in ("train", "test"):
        if not (root / split / "annotations.csv").is_file():
            download_split(root / f"dataset_{split}.json", root / split, progress=progress)
    return root


def run_fingerprint(root: Path, overrides: list[str], config: Path = REFERENCE_CONFIG) -> str:
    """Names the runs of one generation and one recipe (the reference YAML and the --set overrides), so a
    changed recipe trains anew instead of reusing runs made with another. Overrides that change only the speed
    (train.threads, train.progress) do not count: two processes with one thread each share the runs."""
    import hashlib
    kept = [o for o in overrides if not o.startswith(("train.threads=", "train.progress="))]
    recipe = b"".join(path.read_bytes() for path in _config_chain(config)) + "\n".join(kept).encode("utf-8")
    return hashlib.blake2b((root / "generator.json").read_bytes() + recipe, digest_size=5).hexdigest()


# ------------------------------------------------------------------------------------------- context probe
PROBE_VIEWS = ("roi", "ctx3", "frame", "context")  # context: ctx3 and frame together
PROBE_HIST_BINS = 8
PROBE_PIXELS = 8
# Regularisation strengths a probe tries (ascending); the one that best predicts a held-out quarter of the train
# frames is refitted on all of them. A fixed C let the probe of ctx3 + frame overfit below the probe of ctx3 alone.
PROBE_C = (0.01, 0.03, 0.1, 0.3)


def _view_features(image: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Colour histogram (8 bins per channel over the usable pixels) and 8x8 pixels (unusable pixels filled
    with the mean usable colour) of one view: 24 + 192 numbers."""
    pixels = image[usable] if usable.any() else image.reshape(-1, 3)[:1] * 0
    hist = np.concatenate([np.histogram(pixels[:, c], bins=PROBE_HIST_BINS, range=(0, 256))[0]
                           for c in range(3)]).astype(np.float64) / max(len(pixels), 1)
    filled = np.where(usable[..., None], image, pixels.mean(0).astype(image.dtype))
    import cv2
    small = cv2.resize(filled, (PROBE_PIXELS, PROBE_PIXELS), interpolation=cv2.INTER_AREA)
    return np.concatenate([hist, small.ravel() / 255.0])


def _window(image: np.ndarray, usable: np.ndarray, cx: float, cy: float, side: float):
    """A square window of `side` px centred at (cx, cy); pixels outside the frame are unusable."""
    h, w = usable.shape
    half = max(side / 2, 1.0)
    x0, y0, x1, y1 = (int(np.floor(cx - half)), int(np.floor(cy - half)), int(np.ceil(cx + half)),
                      int(np.ceil(cy + half)))
    out = np.zeros((y1 - y0, x1 - x0, 3), image.dtype)
    ok = np.zeros((y1 - y0, x1 - x0), bool)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if fx1 > fx0 and fy1 > fy0:
        out[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = image[fy0:fy1, fx0:fx1]
        ok[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = usable[fy0:fy1, fx0:fx1]
    return out, ok


def probe_features(root: Path, split: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Per annotation of a split: (annotation table: id, image_id; features per probe view). Views: the ROI
    crop; the 3x window around it with every box of the frame masked; the whole frame with every box masked
    (computed once per frame, at most 480 px wide); 'context' = the last two together."""
    from urllib.parse import unquote, urlparse

    import cv2

    coco = json.loads((root / f"dataset_{split}.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    rows, feats = [], {v: [] for v in PROBE_VIEWS[:3]}
    for image in coco["images"]:
        anns = by_image.get(image["id"], [])
        if not anns:
            continue
        url = urlparse(image.get("coco_url") or "")
        path = Path(unquote(url.path)) if url.scheme == "file" else root / "frames" / split / image["file_name"]
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise FileNotFoundError(path)
        usable = np.ones(frame.shape[:2], bool)
        for ann in anns:  # every box masked: the context alone
            x, y, w, h = ann["bbox"]
            usable[max(int(y), 0):int(np.ceil(y + h)), max(int(x), 0):int(np.ceil(x + w))] = False
        k = min(1.0, 480 / frame.shape[1])
        small = cv2.resize(frame, (max(1, round(frame.shape[1] * k)), max(1, round(frame.shape[0] * k))),
                           interpolation=cv2.INTER_AREA)
        small_usable = cv2.resize(usable.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        frame_feat = _view_features(small, small_usable)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            cx, cy = x + w / 2, y + h / 2
            x0, y0 = max(int(x), 0), max(int(y), 0)
            x0, y0 = min(x0, frame.shape[1] - 1), min(y0, frame.shape[0] - 1)
            x1 = max(min(int(np.ceil(x + w)), frame.shape[1]), x0 + 1)
            y1 = max(min(int(np.ceil(y + h)), frame.shape[0]), y0 + 1)
            roi = frame[y0:y1, x0:x1]
            feats["roi"].append(_view_features(roi, np.ones(roi.shape[:2], bool)))
            feats["ctx3"].append(_view_features(*_window(frame, usable, cx, cy, 3 * max(w, h))))
            feats["frame"].append(frame_feat)
            rows.append({"annotation_id": ann["id"], "image_id": image["id"], "category_id": ann.get("category_id")})
    out = {v: np.asarray(f) for v, f in feats.items()}
    out["context"] = np.concatenate([out["ctx3"], out["frame"]], 1)
    return pd.DataFrame(rows), out


def fit_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid=PROBE_C, seed: int = 0):
    """A linear probe (standardised features, logistic regression) of y from x whose C in `grid` best predicts a
    held-out quarter of the groups (frames: a frame's ROIs share its context) when fitted on the rest; refitted
    on everything with that C. Returns (model, C)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    def probe(C: float, warm: bool = False):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=300, warm_start=warm))

    fit, held = next(GroupShuffleSplit(1, test_size=0.25, random_state=seed).split(x, y, groups))
    path, scores = probe(grid[0], warm=True), []
    # one BLAS thread: beside a training on the other core, two threads fitted 16x slower (they spin at barriers)
    with warnings.catch_warnings(), threadpool_limits(1):  # an unconverged probe is still a probe: a lower bound
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in grid:  # ascending C, each fit starting from the last one's weights
            path.set_params(logisticregression__C=C).fit(x[fit], y[fit])
            scores.append(float(np.mean(path.predict(x[held]) == y[held])))
        best = grid[int(np.argmax(scores))]
        return probe(best).fit(x, y), best


def context_probe(root: Path, taxonomy=None, grid=PROBE_C) -> dict:
    """Linear probes (`fit_probe`, fitted on the train split) of the test split's phylum and concept from each
    view alone (`probe_features`), beside always answering the test's most common phylum; and, where the
    generator wrote frame_habitats.csv, from the frame's habitat variables (biotope x depth zone, one-hot: what
    the generator's context can tell at most). Returns {'<view>_phylum': acc, '<view>_concept': acc,
    '<view>_<target>_C': the chosen C, ..., 'majority_phylum': acc, 'n_train', 'n_test'}."""
    taxonomy = taxonomy or load_taxonomy()
    phylum_of = np.array([lin[1] for lin in taxonomy.lineages])
    train_rows, train_x = probe_features(root, "train")
    test_rows, test_x = probe_features(root, "test")
    y_train = np.array([taxonomy.category_ids.index(c) for c in train_rows["category_id"]])
    truth = pd.read_csv(root / "solution.csv").set_index("annotation_id")["concept_name"]
    y_test = np.array([taxonomy.index(truth[a]) for a in test_rows["annotation_id"]])
    out = {"n_train": int(len(y_train)), "n_test": int(len(y_test))}
    _, counts = np.unique(phylum_of[y_test], return_counts=True)
    out["majority_phylum"] = float(counts.max() / len(y_test))
    views = dict(train_x), dict(test_x)
    habitats = root / "frame_habitats.csv"
    if habitats.is_file():
        n_habitats, habitat_of = frame_habitats(root)
        for side, (split, rows) in enumerate((("train", train_rows), ("test", test_rows))):
            views[side]["habitat"] = np.eye(n_habitats)[habitat_of[split].loc[rows["image_id"]].to_numpy()]
    frames = train_rows["image_id"].to_numpy()
    for view in views[0]:
        for target, (a, b) in (("phylum", (phylum_of[y_train], phylum_of[y_test])), ("concept", (y_train, y_test))):
            model, out[f"{view}_{target}_C"] = fit_probe(views[0][view], a, frames, grid)
            out[f"{view}_{target}"] = float(np.mean(model.predict(views[1][view]) == b))
    return out


def probe_table(probes: dict[str, dict]) -> str:
    """Markdown table of `context_probe` results per generator seed."""
    seeds = list(probes)
    views = [v for v in (*PROBE_VIEWS, "habitat") if all(f"{v}_phylum" in probes[g] for g in seeds)]
    lines = ["| view | " + " | ".join(f"gen seed {g}: phylum / concept" for g in seeds) + " |",
             "|" + "---|" * (1 + len(seeds))]
    label = {"roi": "ROI crop", "ctx3": "3x window, boxes masked", "frame": "whole frame, boxes masked",
             "context": "3x window + frame, boxes masked", "habitat": "habitat variables (generator)"}
    for v in views:
        lines.append(f"| {label[v]} | " + " | ".join(f"{probes[g][f'{v}_phylum']:.2f} / {probes[g][f'{v}_concept']:.2f}"
                                                    for g in seeds) + " |")
    lines.append("| most common phylum | " + " | ".join(f"{probes[g]['majority_phylum']:.2f} / -" for g in seeds) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- training
def _config_chain(config: Path) -> list[Path]:
    from src.config import config_sources
    return config_sources(config)


def reference_config(root: Path, seed: int, run_dir: Path, overrides: list[str],
                     config: Path = REFERENCE_CONFIG) -> Config:
    tree = deep_merge(load_yaml(config), parse_overrides([
        f"seed={seed}", f"data.root={root}", f"data.solution={root / 'solution.csv'}",
        f"output.dir={run_dir.parent}", f"output.run_name={run_dir.name}", *overrides]))
    if (run_dir / "checkpoint.pt").is_file() and not (run_dir / "done.json").is_file():
        tree = deep_merge(tree, {"train": {"resume": True}})
    return validate_config(Config, tree, source=f"{config.name} + overrides")


def train_reference(root: Path, seed: int, run_dir: Path, overrides: list[str],
                    config: Path = REFERENCE_CONFIG) -> Path:
    from src.train import train
    if not (run_dir / "done.json").is_file():
        train(reference_config(root, seed, run_dir, overrides, config))
    return run_dir


# ------------------------------------------------------------------------------------------- figures
def run_figures(run_dir: Path, table: pd.DataFrame, taxonomy, D: np.ndarray, render_scale: float) -> dict:
    """Every single-model figure of one finished run on the generated test (and its validation split)."""
    ids, probs, _ = run_probs(run_dir, "test")
    rows = table.loc[ids]
    truth, pred = rows["truth"].to_numpy(), probs.argmax(1)
    out = ep.operating_point(truth, pred, D)
    out.update(ep.error_placement(truth, pred, taxonomy))
    out.update({f"rank_{k}": v for k, v in ep.rank_accuracy(truth, pred, taxonomy).items()})
    truth_rank = np.array([taxonomy.rank_of(taxonomy.names[t]) for t in truth])
    out.update({f"truth_{k}": v for k, v in ep.accuracy_by_group(truth, pred, truth_rank).items()})
    out["species_minus_class"] = out.get("truth_species", np.nan) - out.get("truth_class", np.nan)
    per_class = ep.per_class_accuracy(truth, pred, len(taxonomy))
    out.update({"class_acc_median": per_class["median"], "class_acc_q25": per_class["q25"],
                "class_acc_min": per_class["min"], "classes_at_least_0.9": per_class["n_at_least_0.9"]})
    long_side = rows[["w", "h"]].max(axis=1).to_numpy() / render_scale
    by_size = ep.accuracy_by_size(truth, pred, long_side)
    out.update(by_size)
    out["size_q3_minus_q1"] = by_size["q3"] - by_size["q1"]
    out.update({f"cal_{k}": v for k, v in ep.calibration_bins(truth, probs).items()})
    out["frame_clustering"] = ep.frame_clustering(truth, pred, rows["frame"].to_numpy())
    _, val_probs, val_labels = run_probs(run_dir, "val")
    out["val_accuracy"] = float(np.mean(val_probs.argmax(1) == val_labels))
    out["val_minus_test"] = out["val_accuracy"] - out["accuracy"]
    out["pred"] = pred.tolist()
    history = pd.read_csv(run_dir / "metrics.csv")
    out["train_seconds"] = float(history["epoch_seconds"].sum())
    out["epochs"] = int(history["epoch"].max())
    return out


def geometry_figures(table: pd.DataFrame, class_sizes: pd.DataFrame, render_scale: float) -> dict:
    out = ep.frame_geometry(table["frame"].to_numpy(), table["truth"].to_numpy(), table[["w", "h"]].to_numpy(),
                            table[["frame_w", "frame_h"]].to_numpy())
    long_side = table[["w", "h"]].max(axis=1)
    rel = long_side / table[["frame_w", "frame_h"]].max(axis=1)
    generated = rel.groupby(table["truth"]).median()
    out["size_spearman"] = ep.spearman(generated.to_numpy(), class_sizes["rel_median"].reindex(generated.index).to_numpy())
    generated_px = (long_side / render_scale).groupby(table["truth"]).median()
    out["size_spearman_px"] = ep.spearman(generated_px.to_numpy(),
                                          class_sizes["long_side_median"].reindex(generated_px.index).to_numpy())
    return out


# ------------------------------------------------------------------------------------------- report
def _fmt(value, key: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)) or key in ("distinct_labels", "classes_at_least_0.9", "rois_per_frame_max"):
        return f"{int(round(value))}"
    if key in ("mean_distance", "error_distance", "rois_per_frame", "frame_clustering", "taxa_per_frame",
               "aspect_median", "rois_per_frame_median", "rois_per_frame_p90", "size_spearman",
               "ctx_distance_gain", "twin_mean_distance"):
        return f"{value:.2f}"
    if key.startswith("rel_"):
        return f"{value:.3f}"
    if key in ("ctx_small_gain", "probe_phylum_over_majority"):  # points against a 10-point band: 9.6 is not 10
        return f"{100 * value:.1f} %"
    return f"{100 * value:.0f} %" if abs(value) <= 1.0 and key not in ("val_minus_test", "size_q3_minus_q1",
                                                                       "species_minus_class") else f"{value:.2f}"


def _in_band(value, band) -> bool:
    lo, hi = band
    return value is not None and np.isfinite(value) and (lo is None or value >= lo) and (hi is None or value <= hi)


def _band_text(band, key: str) -> str:
    lo, hi = band
    if lo is not None and hi is not None:
        return f"{_fmt(lo, key)} .. {_fmt(hi, key)}"
    return f">= {_fmt(lo, key)}" if lo is not None else f"<= {_fmt(hi, key)}"


def context_figures(entry: dict) -> dict:
    """The context bands' figures of one generator seed: the twin against the reference run of the same
    model seed, and the context-alone probe against the most common phylum and the ROI probe."""
    out = {}
    probe = entry.get("probe")
    if probe:
        out["probe_phylum_over_majority"] = probe["context_phylum"] - probe["majority_phylum"]
        out["probe_concept_ratio"] = probe["context_concept"] / max(probe["roi_concept"], 1e-9)
    twin, ref = entry.get("twin"), entry["runs"].get(str(entry.get("twin_seed")))
    if twin and ref:
        out["ctx_distance_gain"] = ref["mean_distance"] - twin["mean_distance"]
        out["ctx_small_gain"] = twin.get("q1", np.nan) - ref.get("q1", np.nan)
        gap = ref["size_q3_minus_q1"]
        out["ctx_size_gap_ratio"] = twin["size_q3_minus_q1"] / gap if gap > 0 else float("nan")
        out["twin_accuracy"], out["twin_mean_distance"] = twin["accuracy"], twin["mean_distance"]
    return out


def summarise(results: dict) -> dict:
    """Per generator seed: the mean of its runs' figures, agreement over its seeds, and geometry."""
    out = {}
    for g, entry in results["generations"].items():
        runs = list(entry["runs"].values())
        keys = [k for k in runs[0] if k != "pred"] if runs else []
        mean = {k: float(np.nanmean([r[k] for r in runs])) for k in keys}
        spread = {k: float(np.nanstd([r[k] for r in runs])) for k in keys} if len(runs) > 1 else {}
        mean.update(entry["geometry"])
        mean.update(entry.get("agreement", {}))
        mean.update(context_figures(entry))
        out[g] = {"mean": mean, "spread": spread, "n_runs": len(runs)}
    return out


def plot_profile(results: dict, summary: dict, D: np.ndarray, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    bins = np.arange(0, 13) + 0.5
    for g, entry in results["generations"].items():
        truth = np.array(entry["truth"])
        dists = []
        for run in entry["runs"].values():
            pred = np.array(run["pred"])
            dists.append(pair_distances(truth, pred, D)[truth != pred])
        if dists:
            ax.hist(np.concatenate(dists), bins=bins, density=True, histtype="step", lw=2, label=f"generated, gen seed {g}")
    ax.axvspan(5.6, 7.1, color="tab:red", alpha=0.15, label="real strong models: mean 5.6-7.1")
    ax.set_xlabel("distance of an error"), ax.set_ylabel("share of errors"), ax.legend(fontsize=7)
    ax.set_title("error distances")
    ax = axes[1]
    ranks = list(REAL_PLACEMENT)
    x = np.arange(len(ranks))
    for k, rank in enumerate(ranks):
        lo, hi = REAL_PLACEMENT[rank]
        ax.add_patch(plt.Rectangle((k - 0.4, lo), 0.8, hi - lo, color="tab:red", alpha=0.2,
                                   label="real strong models" if k == 0 else None))
    for g, s in summary.items():
        ax.plot(x, [s["mean"].get(f"within_{r}", np.nan) for r in ranks], "o-", label=f"generated, gen seed {g}")
    ax.set_xticks(x, ranks), ax.set_ylim(0, 1), ax.set_ylabel("share of errors inside the true taxon")
    ax.legend(fontsize=7), ax.set_title("where errors land")
    ax = axes[2]
    px = ["px_0_32", "px_32_64", "px_64_128", "px_128_256", "px_256_inf"]
    for g, s in summary.items():
        ax.plot(range(len(px)), [s["mean"].get(k, np.nan) for k in px], "o-", label=f"generated, gen seed {g}")
    ax.plot([0, 3], [0.52, 0.82], "s", color="tab:red", ms=9, label="real ROI-only strong model")
    ax.set_xticks(range(len(px)), ["<32", "32-64", "64-128", "128-256", ">=256"])
    ax.set_xlabel("box long side (real-frame px)"), ax.set_ylabel("accuracy"), ax.set_ylim(0, 1)
    ax.legend(fontsize=7), ax.set_title("accuracy by box size")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def write_report(results: dict, D: np.ndarray, out_md: Path) -> bool:
    """bench/REALISM.md and its plot. Returns whether every band holds on every generator seed."""
    summary = summarise(results)
    gens = list(summary)
    plot = out_md.with_name("realism_profile.png")
    plot_profile(results, summary, D, plot)
    head = "| figure | real | band | " + " | ".join(
        f"gen seed {g} ({summary[g]['n_runs']} run{'s' if summary[g]['n_runs'] != 1 else ''})" for g in gens) + " | verdict |"
    lines = [head, "|" + "---|" * (4 + len(gens))]
    all_ok = True
    for key, label, real, band in (*CHECKS, *CONTEXT_CHECKS):
        values = [summary[g]["mean"].get(key) for g in gens]
        present = [v for v in values if v is not None]
        ok = all(_in_band(v, band) for v in present)
        all_ok &= ok and bool(present)
        verdict = "not measured (needs several model seeds)" if not present else "holds" if ok else "**fails**"
        cells = []
        for g, v in zip(gens, values):
            s = summary[g]["spread"].get(key)
            cells.append(_fmt(v, key) + (f" +- {_fmt(s, key)}" if s and key in ("accuracy", "mean_distance") else ""))
        lines.append(f"| {label} | {real} | {_band_text(band, key)} | " + " | ".join(cells) + f" | {verdict} |")
    detail = ["| figure | real (strong models) | " + " | ".join(f"gen seed {g}" for g in gens) + " |",
              "|" + "---|" * (2 + len(gens))]
    for key, real in REAL_DETAIL.items():
        detail.append(f"| {DETAIL_LABELS[key]} | {real} | " + " | ".join(_fmt(summary[g]["mean"].get(key), key) for g in gens) + " |")
    geometry = ["| figure | real test | " + " | ".join(f"gen seed {g}" for g in gens) + " |",
                "|" + "---|" * (2 + len(gens))]
    for key, real in REAL_GEOMETRY.items():
        geometry.append(f"| {key} | {_fmt(real, key)} | " + " | ".join(_fmt(summary[g]["mean"].get(key), key)
                                                                         for g in gens) + " |")
    times = [f"gen seed {g} model seed {s}: {r['train_seconds'] / 60:.1f} min ({r['epochs']} epochs)"
             for g, e in results["generations"].items() for s, r in e["runs"].items()]
    text = f"""# Realism of the generated benchmark

Generated by `{results['command']}` on {results['date']} ({results['machine']}, load average at the start
{results['load_start']}, at the end {results['load_end']}; commit {results['commit']}).

The reference recipe (`cfg/reference_ce.yaml`: plain cross-entropy, one WRN-10-2 head, 32 px, argmax,
{results['epochs']} epochs) trained on the `{results['preset']}` preset of the generator, scored on its
shifted test split, against how real FathomNet 2025 competition models err on the real test (strong models:
the 1st place and four competitive entries; figures from their public prediction files scored with the
official distance). Model figures are means over the runs of a generator seed.

**Verdict: {'every band holds on every generator seed' if all_ok else 'some bands fail (marked)'}.**

## Bands

{chr(10).join(lines)}

![error distances, error placement, accuracy by size]({plot.name})

## The rest of the profile (no band; for comparison)

{chr(10).join(detail)}

## Context

The context twin (`cfg/reference_ctx.yaml`: the reference with views ROI + 3x window + whole frame) on the
first model seed: {' / '.join(f"gen seed {g}: accuracy {_fmt(summary[g]['mean'].get('twin_accuracy'), 'accuracy')}, "
                              f"mean distance {_fmt(summary[g]['mean'].get('twin_mean_distance'), 'mean_distance')}"
                              for g in gens)}.
Linear probes (logistic regression on colour histograms and 8x8 pixels, C chosen on held-out train frames,
fitted on train, test accuracy):

{probe_table({g: e["probe"] for g, e in results["generations"].items() if "probe" in e}) if any("probe" in e for e in results["generations"].values()) else "(not measured)"}

What limits the twin (`bench.context_diagnosis`): the reference with the train frames' habitat posterior
(p(concept | biotope, depth zone), Bayes' rule: what an ideal reader of the generator's habitat adds, no
training), and the twin with each view taken from a test ROI of another frame (what it leans on).

{chr(10).join(f"Gen seed {g}:{chr(10)}{chr(10)}{diagnosis_table(e['diagnosis'])}{chr(10)}"
              for g, e in results["generations"].items() if "diagnosis" in e) or "(not measured)"}

## Test geometry (scale-free: boxes relative to the frame)

{chr(10).join(geometry)}

## Training time per run

{chr(10).join('- ' + t for t in times)}
"""
    atomic_write_text(out_md, text)
    return all_ok


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realism", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="bench", help="generator preset (default bench)")
    parser.add_argument("--gen-seeds", "--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="generator seeds (default 0 1 2)")
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="model seeds on the first generator seed (the others get the first only)")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "realism", help="data and runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "REALISM.md", help="the report")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the reference recipe and its twin (e.g. train.threads=1)")
    parser.add_argument("--probe-only", action="store_true",
                        help="only generate and run the context probes (minutes); prints their table and writes "
                             "WORK/probe_PRESET.json")
    parser.add_argument("--no-twin", action="store_true",
                        help="skip the context twin (cfg/reference_ctx.yaml): its bands are not measured")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    taxonomy = load_taxonomy()
    if args.probe_only:
        probes = {}
        for g in args.gen_seeds:
            start = time.perf_counter()
            probes[str(g)] = context_probe(generate_data(args.work, args.preset, g, not args.no_progress), taxonomy)
            print(f"gen seed {g}: probes in {time.perf_counter() - start:.0f} s")
        atomic_write_json(args.work / f"probe_{args.preset}.json", probes)
        print(probe_table(probes))
        return 0
    D = distance_matrix(taxonomy)
    class_sizes = load_skeleton().class_sizes
    results = {"command": "python -m bench.realism " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_model()}, {os.cpu_count()} cores", "commit": git_commit(),
               "load_start": " ".join(f"{x:.1f}" for x in load_average()), "preset": args.preset,
               "epochs": reference_config(Path("."), 0, Path("x/y"), args.set).train.epochs, "generations": {}}
    json_path = args.out.with_suffix(".json")
    for k, g in enumerate(args.gen_seeds):
        root = prepare_data(args.work, args.preset, g, not args.no_progress)
        render_scale = json.loads((root / "generator.json").read_text())["render_scale"]
        table = test_table(root, taxonomy)
        entry = {"truth": table["truth"].tolist(), "geometry": geometry_figures(table, class_sizes, render_scale),
                 "runs": {}, "probe": context_probe(root, taxonomy)}
        results["generations"][str(g)] = entry
        for s in (args.model_seeds if k == 0 else args.model_seeds[:1]):
            run_dir = args.work / "runs" / run_fingerprint(root, args.set) / f"g{g}_s{s}"
            start = time.perf_counter()
            train_reference(root, s, run_dir, args.set)
            entry["runs"][str(s)] = run_figures(run_dir, table, taxonomy, D, render_scale)
            print(f"gen seed {g} model seed {s}: accuracy {entry['runs'][str(s)]['accuracy']:.3f}, "
                  f"distance {entry['runs'][str(s)]['mean_distance']:.3f} ({time.perf_counter() - start:.0f} s)")
        if not args.no_twin:  # the context twin, on the first model seed
            s = args.model_seeds[0]
            run_dir = args.work / "runs" / run_fingerprint(root, args.set, TWIN_CONFIG) / f"g{g}_s{s}"
            train_reference(root, s, run_dir, args.set, TWIN_CONFIG)
            entry["twin"], entry["twin_seed"] = run_figures(run_dir, table, taxonomy, D, render_scale), s
            print(f"gen seed {g} context twin: accuracy {entry['twin']['accuracy']:.3f}, "
                  f"distance {entry['twin']['mean_distance']:.3f}")
            ref_dir = args.work / "runs" / run_fingerprint(root, args.set) / f"g{g}_s{s}"
            entry["diagnosis"] = {**habitat_readout(root, ref_dir, table, taxonomy),
                                  **{f"twin: {k}": v for k, v in view_reliance(root, run_dir, table, taxonomy).items()}}
        if len(entry["runs"]) > 1:
            truth = np.array(entry["truth"])
            entry["agreement"] = ep.seed_agreement(truth, [np.array(r["pred"]) for r in entry["runs"].values()])
        results["load_end"] = " ".join(f"{x:.1f}" for x in load_average())
        atomic_write_json(json_path, results)
        ok = write_report(results, D, args.out)
    print(f"wrote {args.out} ({'all bands hold' if ok else 'some bands fail'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
