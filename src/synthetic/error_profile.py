"""How a classifier errs on the hierarchical task: pure functions, arrays in, numbers out.

These are the figures that describe real competition models on the real FathomNet 2025 test (accuracy,
distance of the errors, where the errors land in the tree, per-rank accuracy, item and frame difficulty,
size, calibration, agreement) and the geometry of a data set; `bench/realism.py` compares a generated
benchmark with the real profile through them, and they apply to any model's predictions.

Conventions: `truth`, `pred` are class indices (N,), `D` the (C, C) distance matrix, `taxonomy` the
Taxonomy (its 7-rank lineages, None where unset), `frames` a frame id per ROI.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from src.score import pair_distances
from src.taxonomy import RANKS, Taxonomy

WITHIN_RANKS = ("genus", "family", "order", "class", "phylum")
REAL_PX_BINS = (0, 32, 64, 128, 256, np.inf)  # box long side in real-frame pixels


def shares_rank(truth: np.ndarray, pred: np.ndarray, taxonomy: Taxonomy, rank: str) -> np.ndarray:
    """True where truth and prediction have the same (set) taxon at `rank`."""
    code, _ = taxonomy.rank_labels(rank)
    return (code[truth] >= 0) & (code[truth] == code[pred])


def operating_point(truth: np.ndarray, pred: np.ndarray, D: np.ndarray) -> dict[str, float]:
    """Accuracy, mean distance, mean distance of the errors, share of errors at distance <= 2, labels used."""
    dist = pair_distances(truth, pred, D)
    wrong = truth != pred
    return {"accuracy": float(np.mean(~wrong)), "mean_distance": float(dist.mean()),
            "error_distance": float(dist[wrong].mean()) if wrong.any() else 0.0,
            "errors_within_2": float(np.mean(dist[wrong] <= 2)) if wrong.any() else 0.0,
            "distinct_labels": int(len(np.unique(pred)))}


def error_placement(truth: np.ndarray, pred: np.ndarray, taxonomy: Taxonomy) -> dict[str, float]:
    """Share of the errors that stay inside the true taxon at each rank genus..phylum, the share that shares
    only the kingdom, and the error types: too coarse (prediction is an ancestor of the truth), too fine
    (a descendant), lateral (neither)."""
    wrong = truth != pred
    t, p = truth[wrong], pred[wrong]
    out = {f"within_{rank}": float(shares_rank(t, p, taxonomy, rank).mean()) if len(t) else 0.0
           for rank in WITHIN_RANKS}
    out["kingdom_only"] = 1.0 - out["within_phylum"]
    lin = [tuple(x) for x in taxonomy.lineages]
    depth = np.array([sum(x is not None for x in lineage) for lineage in lin])

    def is_ancestor(a: int, b: int) -> bool:  # a's lineage is a proper prefix of b's
        return depth[a] < depth[b] and all(x is None or x == y for x, y in zip(lin[a], lin[b]))

    coarse = np.array([is_ancestor(b, a) for a, b in zip(t, p)], dtype=bool)
    fine = np.array([is_ancestor(a, b) for a, b in zip(t, p)], dtype=bool)
    n = max(len(t), 1)
    out.update(too_coarse=float(coarse.sum() / n), too_fine=float(fine.sum() / n),
               lateral=float(1.0 - (coarse.sum() + fine.sum()) / n))
    return out


def rank_accuracy(truth: np.ndarray, pred: np.ndarray, taxonomy: Taxonomy) -> dict[str, float]:
    """Per rank phylum..species: share of ROIs (whose truth is set at that rank) predicted in the true taxon."""
    out = {}
    for rank in RANKS[1:]:
        code, _ = taxonomy.rank_labels(rank)
        has = code[truth] >= 0
        out[rank] = float((code[truth][has] == code[pred][has]).mean()) if has.any() else float("nan")
    return out


def accuracy_by_group(truth: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict:
    """Accuracy within each group label (e.g. the rank at which each truth is named)."""
    correct = truth == pred
    return {g: float(correct[groups == g].mean()) for g in pd.unique(groups)}


def per_class_accuracy(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Spread of per-class accuracy over the classes present: median, q25, min, count >= 0.9."""
    acc = np.array([np.mean(pred[truth == c] == c) for c in range(n_classes) if (truth == c).any()])
    return {"median": float(np.median(acc)), "q25": float(np.quantile(acc, 0.25)), "min": float(acc.min()),
            "n_at_least_0.9": int((acc >= 0.9).sum()), "n_classes": int(len(acc))}


def seed_agreement(truth: np.ndarray, preds: list[np.ndarray]) -> dict[str, float]:
    """Item difficulty over several models: share of ROIs all get wrong, mean Jaccard overlap of two models'
    error sets, share of the ROIs both get wrong where they pick the same wrong label, and the coverage and
    precision of the ROIs on which all agree."""
    wrong = [p != truth for p in preds]
    jaccard, same = [], []
    for a, b in combinations(range(len(preds)), 2):
        union = wrong[a] | wrong[b]
        both = wrong[a] & wrong[b]
        jaccard.append(both.sum() / max(union.sum(), 1))
        same.append(np.mean(preds[a][both] == preds[b][both]) if both.any() else 0.0)
    agree = np.all([p == preds[0] for p in preds], axis=0)
    return {"all_wrong": float(np.mean(np.all(wrong, axis=0))), "jaccard": float(np.mean(jaccard)),
            "both_wrong_same_label": float(np.mean(same)), "all_agree_coverage": float(agree.mean()),
            "all_agree_precision": float(np.mean(preds[0][agree] == truth[agree])) if agree.any() else 0.0}


def frame_clustering(truth: np.ndarray, pred: np.ndarray, frames: np.ndarray) -> float:
    """Error rate of ROIs that have a wrong sibling in their frame, divided by the overall error rate."""
    wrong = (truth != pred).astype(np.int64)
    table = pd.DataFrame({"frame": frames, "wrong": wrong})
    wrong_in_frame = table.groupby("frame")["wrong"].transform("sum").to_numpy()
    has_wrong_sibling = (wrong_in_frame - wrong) > 0
    base = wrong.mean()
    if not has_wrong_sibling.any() or base == 0:
        return float("nan")
    return float(wrong[has_wrong_sibling].mean() / base)


def accuracy_by_size(truth: np.ndarray, pred: np.ndarray, long_side: np.ndarray) -> dict[str, float]:
    """Accuracy per quarter of the box long side (q1 smallest) and per real-pixel bin of `long_side`
    (give it in real-frame pixels: <32, 32-64, 64-128, 128-256, >=256)."""
    correct = truth == pred
    edges = np.quantile(long_side, [0.25, 0.5, 0.75])
    quarter = np.searchsorted(edges, long_side, side="right")
    out = {f"q{k + 1}": float(correct[quarter == k].mean()) for k in range(4) if (quarter == k).any()}
    bins = np.digitize(long_side, REAL_PX_BINS[1:-1])
    for k in range(len(REAL_PX_BINS) - 1):
        if (bins == k).any():
            lo, hi = REAL_PX_BINS[k], REAL_PX_BINS[k + 1]
            out[f"px_{lo}_{'inf' if np.isinf(hi) else int(hi)}"] = float(correct[bins == k].mean())
    return out


def calibration_bins(truth: np.ndarray, probs: np.ndarray, edges=(0.0, 0.5, 0.8, 0.95, 1.0001)) -> dict[str, float]:
    """Accuracy of the argmax within bins of the max probability."""
    top = probs.max(1)
    correct = probs.argmax(1) == truth
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (top >= lo) & (top < hi)
        if inside.any():
            out[f"p_{lo:g}_{min(hi, 1):g}"] = float(correct[inside].mean())
    return out


def frame_geometry(frames: np.ndarray, labels: np.ndarray, box_wh: np.ndarray, frame_wh: np.ndarray) -> dict:
    """ROIs per frame, taxa per frame, and box sizes relative to the frame's long side."""
    table = pd.DataFrame({"frame": frames, "label": labels})
    n = table.groupby("frame").size()
    distinct = table.groupby("frame")["label"].nunique()
    long_side = box_wh.max(1)
    rel = long_side / frame_wh.max(1)
    q = np.quantile(rel, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"rois_per_frame": float(n.mean()), "rois_per_frame_median": float(n.median()),
            "rois_per_frame_p90": float(n.quantile(0.9)), "rois_per_frame_max": int(n.max()),
            "single_roi_frames": float((n == 1).mean()), "taxa_per_frame": float(distinct.mean()),
            "single_taxon_frames": float((distinct == 1).mean()),
            "rois_in_single_taxon_frames": float(n[distinct == 1].sum() / n.sum()),
            "rel_p10": float(q[0]), "rel_q25": float(q[1]), "rel_median": float(q[2]), "rel_q75": float(q[3]),
            "rel_p90": float(q[4]),
            "aspect_median": float(np.median(long_side / np.maximum(box_wh.min(1), 1e-9)))}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return float(spearmanr(a, b).statistic)
