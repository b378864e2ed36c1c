"""Stage: GMU-gated pseudo-labels of the test ROIs from the previous round's ensemble.

    python -m src.stages.pseudo_label CONFIG.yaml [overrides] [--round R]

Reads round R-1's members' test_probs.npz and writes round_R/pseudo_labels.csv (annotation_id,
concept_name, votes, agreement = votes / members, U), stats.json and pseudo_labels.png. Each member's
label is the argmax of its own head mean; the ensemble label is the mode, ties broken by the members'
own U; a ROI is kept when at least pseudo.min_votes members agree and the ensemble U (GMU over the
members' head means, spread convention decoding.sigma) is >= pseudo.u_threshold. Every round is made
afresh from the latest ensemble, so a ROI that stops passing is dropped and a changed label is updated;
the training annotations are never written.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from src.artifacts import atomic_write_json, atomic_write_with
from src.ensemble import ensemble_u, member_labels_and_u, vote
from src.plots import plot_threshold_curves
from src.score import mean_distance, read_solution
from src.stages.common import (
    StageError, load_predictions, load_taxonomy_and_distance, new_run_name, open_run, run_cli, stage_parser,
)
from src.stages.pipeline_config import PipelineConfig

PSEUDO_COLUMNS = ["annotation_id", "concept_name", "votes", "agreement", "U"]
QUANTILES = np.linspace(0.0, 0.95, 20)  # thresholds at these quantiles of U: even steps of coverage at any U scale


def select_pseudo_labels(labels: np.ndarray, member_u: np.ndarray, ens_u: np.ndarray, min_votes: int,
                         u_threshold: float, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vote and gate: returns (label (N,), votes (N,), keep (N,) bool) for members' labels/U (M, N)."""
    label, votes = vote(labels, member_u, num_classes=num_classes)
    keep = (votes >= min_votes) & (ens_u >= u_threshold)
    return label, votes, keep


def threshold_curves(label: np.ndarray, votes: np.ndarray, ens_u: np.ndarray, n_members: int,
                     truth: np.ndarray | None, D: np.ndarray) -> list[dict]:
    """Coverage (and accuracy / mean distance when `truth` is known) per (min_votes, U threshold)."""
    thresholds = np.unique(np.concatenate([[0.0], np.quantile(ens_u, QUANTILES)])) if len(ens_u) else np.zeros(1)
    rows = []
    for k in range(1, n_members + 1):
        for t in thresholds:
            keep = (votes >= k) & (ens_u >= t)
            row = {"min_votes": k, "u_threshold": float(t), "count": int(keep.sum()), "coverage": float(keep.mean())}
            if truth is not None:
                row["accuracy"] = float((label[keep] == truth[keep]).mean()) if keep.any() else None
                row["mean_distance"] = mean_distance(truth[keep], label[keep], D) if keep.any() else None
            rows.append(row)
    return rows


def make_pseudo_labels(cfg: PipelineConfig, r: int) -> dict:
    """Write round r's pseudo-labels from round r-1's ensemble; returns the stats (also in stats.json)."""
    if r < 1:
        raise StageError("pseudo-labels are made for rounds >= 1 (from the previous round's ensemble)")
    layout = cfg.layout
    taxonomy, D = load_taxonomy_and_distance()
    members = [layout.member_dir(r - 1, s) for s in cfg.seeds]
    missing = [str(m) for m in members if not (m / "done.json").is_file()]
    if missing:
        raise StageError(f"round {r - 1} members are not finished: {', '.join(missing)}")
    preds = load_predictions(members, "test", taxonomy)
    if preds is None:
        raise StageError(f"round {r - 1} members have no test_probs.npz")
    labels, member_u = member_labels_and_u(preds.members, sigma=cfg.decoding.sigma)
    ens_u = ensemble_u(preds, cfg.decoding.sigma)
    label, votes, keep = select_pseudo_labels(labels, member_u, ens_u, cfg.pseudo.min_votes,
                                              cfg.pseudo.u_threshold, len(taxonomy))
    n_members = len(cfg.seeds)
    frame = pd.DataFrame({
        "annotation_id": preds.annotation_id[keep].astype(np.int64),
        "concept_name": np.asarray(taxonomy.names, dtype=object)[label[keep]],
        "votes": votes[keep],
        "agreement": np.round(votes[keep] / n_members, 4),
        "U": np.round(ens_u[keep], 6),
    })[PSEUDO_COLUMNS]
    truth = read_solution(cfg.solution, preds.annotation_id, taxonomy) if cfg.solution else None
    stats = {
        "round": r, "from_round": r - 1, "members": n_members, "test_rois": int(len(keep)),
        "min_votes": cfg.pseudo.min_votes, "u_threshold": cfg.pseudo.u_threshold, "sigma": cfg.decoding.sigma,
        "count": int(keep.sum()), "coverage": float(keep.mean()),
        "votes_histogram": {int(k): int((votes == k).sum()) for k in range(1, n_members + 1)},
    }
    if truth is not None:
        stats["accuracy"] = float((label[keep] == truth[keep]).mean()) if keep.any() else None
        stats["mean_distance"] = mean_distance(truth[keep], label[keep], D) if keep.any() else None
    stats.update(compare_with_previous(frame, layout.pseudo_labels(r - 1)))
    stats["curves"] = threshold_curves(label, votes, ens_u, n_members, truth, D)
    out = layout.pseudo_labels(r)
    refuse_rewrite_under_trained_round(cfg, r, frame.to_csv(index=False))
    atomic_write_with(out, lambda tmp: frame.to_csv(tmp, index=False))
    atomic_write_json(out.with_name("stats.json"), stats)
    plot_threshold_curves(stats["curves"], out.with_name("pseudo_labels.png"),
                f"{cfg.name} round {r}: pseudo-labels from {n_members} members")
    return stats


def refuse_rewrite_under_trained_round(cfg: PipelineConfig, r: int, new_text: str) -> None:
    """StageError when round r's members were (or are being) trained on a pseudo_labels.csv that differs
    from `new_text`: an artefact later steps were built on is never rewritten."""
    path = cfg.layout.pseudo_labels(r)
    started = [d for d in (cfg.layout.member_dir(r, s) for s in cfg.seeds)
               if (d / "done.json").is_file() or (d / "checkpoint.pt").is_file()]
    if started and path.is_file() and path.read_text() != new_text:
        raise StageError(f"{path} is what round {r}'s members ({started[0]}, ...) were trained on; it is not "
                         f"rewritten with other pseudo-labels: start a new run with name={new_run_name(cfg)}")


def compare_with_previous(current: pd.DataFrame, previous_path) -> dict:
    """Counts of ROIs added, dropped, relabelled and unchanged relative to the previous round's file."""
    if not previous_path.is_file():
        return {"added": int(len(current)), "dropped": 0, "changed": 0, "unchanged": 0}
    prev = pd.read_csv(previous_path).set_index("annotation_id")["concept_name"]
    cur = current.set_index("annotation_id")["concept_name"]
    both = cur.index.intersection(prev.index)
    changed = int((cur[both] != prev[both]).sum())
    return {"added": int(len(cur.index.difference(prev.index))), "dropped": int(len(prev.index.difference(cur.index))),
            "changed": changed, "unchanged": int(len(both) - changed)}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("pseudo_label", __doc__)
    parser.add_argument("--round", type=int, default=1, help="round to make pseudo-labels for (from round-1's ensemble)")

    def body(cfg, args):
        with open_run(cfg, f"pseudo_label_{args.round}", args.wait):
            stats = make_pseudo_labels(cfg, args.round)
        line = f"round {args.round}: {stats['count']} pseudo-labels ({stats['coverage']:.1%} of {stats['test_rois']} test ROIs)"
        if stats.get("accuracy") is not None:
            line += f", accuracy {stats['accuracy']:.3f}, mean distance {stats['mean_distance']:.3f}"
        print(line + f"; added {stats['added']}, dropped {stats['dropped']}, changed {stats['changed']}")

    return run_cli(parser, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
