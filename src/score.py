"""Local leaderboard: the competition's mean hierarchical distance of a submission against a solution.

    python -m src.score SOLUTION.csv SUBMISSION.csv [--json] [--bootstrap N]

Both files have annotation_id,concept_name (the solution may instead use the answer-key layout
annotation_id,image_id,category_id,name). Ids must match exactly; a predicted name that is not one
of the 79 concepts is not an error: it scores 12 and is counted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from src.ensemble import decode_bayes
from src.submission import LabelFileError, read_label_csv
from src.taxonomy import RANKS, UNKNOWN_NAME_DISTANCE, Taxonomy, distance_matrix, load_taxonomy


def pair_distances(truth_idx: np.ndarray, pred_idx: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Per-row distance D[truth, pred]; a prediction index of -1 (unknown name) scores 12."""
    padded = np.concatenate([D, np.full((len(D), 1), UNKNOWN_NAME_DISTANCE, dtype=D.dtype)], axis=1)
    return padded[truth_idx, pred_idx]  # index -1 is the last column: the unknown-name column


def mean_distance(truth_idx: np.ndarray, pred_idx: np.ndarray, D: np.ndarray) -> float:
    """The competition metric: mean of D[truth, pred] over the rows (NaN for no rows; pred -1 scores 12).

    Every score of the project (training metrics, pipeline tables, benchmarks) goes through this."""
    return float(pair_distances(truth_idx, pred_idx, D).mean()) if len(truth_idx) else float("nan")


def read_solution(path: str | Path, annotation_id: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """True class index per annotation id, from a solution CSV (annotation_id and concept_name or name).

    The solution must hold exactly these ids: LabelFileError names the ids missing on either side
    (a partial overlap is never scored silently), and any unknown concept in the solution."""
    solution = read_label_csv(path, name_columns=("concept_name", "name"))
    truth = solution.set_index("annotation_id")["concept_name"]
    wanted = pd.Index(np.asarray(annotation_id, dtype=np.int64))
    missing, extra = wanted.difference(truth.index), truth.index.difference(wanted)
    if len(missing) or len(extra):
        raise LabelFileError(f"{path}: the solution's annotation ids differ from the {len(wanted)} predicted ones "
                             f"({len(missing)} missing, e.g. {missing[:3].tolist()}; {len(extra)} extra, "
                             f"e.g. {extra[:3].tolist()})")
    idx = taxonomy.indices(truth.reindex(wanted).to_numpy())
    if (idx < 0).any():
        raise LabelFileError(f"{path}: the solution names an unknown concept {truth.reindex(wanted)[idx < 0].iloc[0]!r}")
    return idx


def classification_metrics(probs: np.ndarray, labels: np.ndarray, D: np.ndarray,
                           rank_labels: dict[str, np.ndarray]) -> dict[str, float]:
    """accuracy, mean distance (argmax and Bayes decoding), per-rank accuracy of probs (N, C) vs labels (N,).

    Per-rank accuracy: predicted and true concepts share the ancestor at that rank, over the samples
    whose true concept has that rank set."""
    pred = probs.argmax(axis=1)
    out = {"accuracy": float((pred == labels).mean()),
           "distance": mean_distance(labels, pred, D),
           "distance_bayes": mean_distance(labels, decode_bayes(probs, D), D)}
    for rank, table in rank_labels.items():
        truth = table[labels]
        known = truth >= 0
        out[f"acc_{rank}"] = float((table[pred][known] == truth[known]).mean()) if known.any() else float("nan")
    return out


def chance_metrics(labels: np.ndarray, D: np.ndarray) -> dict[str, float]:
    """What guessing scores on these labels: uniform random guess, and the best constant label."""
    return {"chance_accuracy": 1.0 / len(D),
            "chance_distance": float(D[labels].mean()),
            "best_constant_distance": float(D[labels].mean(axis=0).min())}


BOOTSTRAP_CHUNK = 1 << 22  # resampled indices held at once (32 MB of int64), whatever N and the row count


def bootstrap_means(values: np.ndarray, n_resamples: int, seed: int = 0,
                    chunk_elements: int = BOOTSTRAP_CHUNK) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of `values`, drawn a few rows at a time.

    The draws are those of one `rng.integers(0, n, size=(n_resamples, n))` call, so a seed gives the same
    means (bit for bit while a resample fits in a chunk, and for integer distances always), but memory
    stays at about `chunk_elements` indices instead of n_resamples x n."""
    n = len(values)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    if n <= chunk_elements:  # whole resamples per chunk: each row's mean is computed exactly as in one call
        rows = max(1, chunk_elements // max(n, 1))
        for start in range(0, n_resamples, rows):
            stop = min(start + rows, n_resamples)
            means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
        return means
    for r in range(n_resamples):  # a resample larger than a chunk: summed piece by piece
        total = 0.0
        for start in range(0, n, chunk_elements):
            total += values[rng.integers(0, n, size=min(chunk_elements, n - start))].sum()
        means[r] = total / n
    return means


def bootstrap_interval(values: np.ndarray, n_resamples: int, seed: int = 0, level: float = 0.95,
                       chunk_elements: int = BOOTSTRAP_CHUNK) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (memory bounded: see bootstrap_means)."""
    means = bootstrap_means(values, n_resamples, seed, chunk_elements)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def score_frames(solution: pd.DataFrame, submission: pd.DataFrame, taxonomy: Taxonomy | None = None,
                 D: np.ndarray | None = None) -> dict:
    """Score a submission frame against a solution frame (both annotation_id, concept_name).

    Raises LabelFileError when the ids do not match one to one or the solution names an unknown concept."""
    taxonomy = taxonomy or load_taxonomy()
    D = distance_matrix(taxonomy) if D is None else D
    truth_ids, sub_ids = pd.Index(solution["annotation_id"]), pd.Index(submission["annotation_id"])
    if truth_ids.equals(sub_ids):  # the usual case, both sorted by id: no hashing needed
        row_of_truth = slice(None)
    else:
        row_of_truth = sub_ids.get_indexer(truth_ids)  # ids are unique (read_label_csv checks)
    if isinstance(row_of_truth, np.ndarray) and (row_of_truth < 0).any():
        missing = truth_ids[row_of_truth < 0]
        raise LabelFileError(f"submission lacks {len(missing)} annotation id(s) of the solution, e.g. {missing[:5].tolist()}")
    if len(sub_ids) > len(truth_ids):
        extra = sub_ids[truth_ids.get_indexer(sub_ids) < 0]
        raise LabelFileError(f"submission has {len(extra)} annotation id(s) not in the solution, e.g. {extra[:5].tolist()}")
    truth_idx = taxonomy.indices(solution["concept_name"])
    pred_idx = taxonomy.indices(submission["concept_name"])[row_of_truth]
    if (truth_idx < 0).any():
        bad = solution["concept_name"].to_numpy()[truth_idx < 0][0]
        raise LabelFileError(f"solution names an unknown concept {bad!r}")
    dist = pair_distances(truth_idx, pred_idx, D)
    rank_names = (*RANKS, "other")
    rank_of_class = np.array([rank_names.index(taxonomy.rank_of(n)) for n in taxonomy.names])
    truth_rank = rank_of_class[truth_idx]
    counts = np.bincount(truth_rank, minlength=len(rank_names))
    sums = np.bincount(truth_rank, weights=dist, minlength=len(rank_names))
    by_rank = {rank: {"n": int(counts[r]), "score": float(sums[r] / counts[r])}
               for r, rank in enumerate(rank_names) if counts[r]}
    return {"score": float(dist.mean()), "n": int(len(dist)), "accuracy": float((pred_idx == truth_idx).mean()),
            "unknown_names": int((pred_idx < 0).sum()), "by_rank": by_rank, "distances": dist}


def score_files(solution_path: str | Path, submission_path: str | Path, taxonomy: Taxonomy | None = None) -> dict:
    """Read and score two CSV files (see score_frames)."""
    solution = read_label_csv(solution_path, name_columns=("concept_name", "name"))
    submission = read_label_csv(submission_path)
    return score_frames(solution, submission, taxonomy)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("solution", help="solution CSV: annotation_id,concept_name (or the answer key with a name column)")
    parser.add_argument("submission", help="submission CSV: annotation_id,concept_name")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--bootstrap", type=non_negative_int, default=0, metavar="N",
                        help="also a 95%% bootstrap interval from N resamples (memory does not grow with N)")
    args = parser.parse_args(argv)
    try:
        result = score_files(args.solution, args.submission)
    except LabelFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    distances = result.pop("distances")
    if args.bootstrap:
        result["bootstrap_95"] = bootstrap_interval(distances.astype(np.float64), args.bootstrap)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"score {result['score']:.6f}  (mean hierarchical distance over {result['n']} rows; 0 best, 12 worst)")
    print(f"accuracy {result['accuracy']:.4f}   unknown names {result['unknown_names']}")
    if "bootstrap_95" in result:
        print("95% bootstrap interval {:.4f} .. {:.4f}".format(*result["bootstrap_95"]))
    for rank, part in result["by_rank"].items():
        print(f"  true concept at {rank:<8} n={part['n']:<5} mean distance {part['score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
