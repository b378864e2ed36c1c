"""Stage: gated pseudo-labels of the test ROIs from the previous round's ensemble.

    python -m src.stages.pseudo_label CONFIG.yaml [overrides] [--round R]

Reads round R-1's members' test_probs.npz and writes round_R/pseudo_labels.csv (annotation_id,
concept_name, votes = members whose own label it is, agreement = votes / members, U), stats.json and
pseudo_labels.png. Each member's label is the argmax of its own head mean; the ensemble label is the mode,
ties broken by the members' own U. The gate (pseudo.gate, src/gates.py) picks the ROIs: by default
(agreement_u) at least pseudo.min_votes members agree and the ensemble U (GMU over the members' head means,
spread convention decoding.sigma) is >= pseudo.u_threshold; agreement drops the U condition;
expected_distance accepts a Bayes risk <= pseudo.tau, max_prob a max probability >= pseudo.prob_threshold
(both on the ensemble mean, with its Bayes / argmax label); avgk_set_size a set of at most
pseudo.max_set_size concepts of the members' average-K set head. pseudo.frame_aware first replaces every
member's distributions by their frame-aware ones (the frame_bayes decoder's mean field). pseudo.coarse
adds, for ROIs the gate rejects but on whose genus/family/order at least min_votes members agree, a row
with target_taxon (trained with the set NLL). With a known solution, stats.json holds every gate's
precision and mean distance at equal coverages 0.2..0.9 ("gates_at_equal_coverage"). Every round is made
afresh from the latest ensemble, so a ROI that stops passing is dropped and a changed label is updated;
the training annotations are never written.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from src.artifacts import atomic_write_json, atomic_write_with
from src.decoding import EnsemblePredictions, ensemble_u, frame_aware
from src.ensemble import member_labels_and_u
from src.gates import (
    Gate,
    agreement_gate,
    agreement_u_gate,
    avgk_set_size_gate,
    coarse_agreement,
    compare_gates,
    expected_distance_gate,
    fit_avgk_threshold,
    max_probability_gate,
)
from src.plots import plot_threshold_curves
from src.run_files import has_weights, is_done
from src.score import mean_distance, read_solution
from src.stages.cli import StageError, check_round, run_cli, stage_parser
from src.stages.pipeline_config import COARSE_RANKS, PipelineConfig, PseudoLabelConfig, new_run_name
from src.stages.predictions import load_round, load_taxonomy_and_distance
from src.stages.state import open_run

PSEUDO_COLUMNS = ["annotation_id", "concept_name", "votes", "agreement", "U"]
QUANTILES = np.linspace(0.0, 0.95, 20)  # thresholds at these quantiles of U: even steps of coverage at any U scale


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
    check_round(cfg, r)
    layout, p = cfg.layout, cfg.pseudo
    taxonomy, D = load_taxonomy_and_distance()
    members = [layout.member_dir(r - 1, s) for s in cfg.seeds]
    missing = [str(m) for m in members if not is_done(m)]
    if missing:
        raise StageError(f"round {r - 1} members are not finished: {', '.join(missing)}")
    loaded = load_round(cfg, members, taxonomy, ["frame_bayes"] if p.frame_aware else [])
    if loaded.test is None:
        raise StageError(f"round {r - 1} members have no test_probs.npz")
    preds, labels, member_u, ens_u, gates = gate_inputs(cfg, loaded, D, len(taxonomy), p.frame_aware)
    if p.gate not in gates:
        raise StageError(f"gate {p.gate} needs the members' average-K set head scores on validation and test "
                         "(train them with model.avgk_head=true)")
    gate = gates[p.gate]
    label, keep = gate.label, gate.keep
    votes = (labels == label).sum(axis=0)  # members whose own label is the pseudo-label
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
        "round": r, "from_round": r - 1, "members": n_members, "test_rois": int(len(keep)), "gate": p.gate,
        "min_votes": p.min_votes, "u_threshold": p.u_threshold, "sigma": cfg.decoding.sigma,
        "count": int(keep.sum()), "coverage": float(keep.mean()),
        "votes_histogram": {int(k): int((gates["agreement"].score == k).sum()) for k in range(1, n_members + 1)},
    }
    if truth is not None:
        stats["accuracy"] = float((label[keep] == truth[keep]).mean()) if keep.any() else None
        stats["mean_distance"] = mean_distance(truth[keep], label[keep], D) if keep.any() else None
    if p.coarse:
        coarse, coarse_stats = coarse_pseudo_labels(preds, labels, ens_u, keep, p, taxonomy, truth)
        frame = pd.concat([frame.assign(target_taxon=""), coarse]).sort_values("annotation_id", kind="stable")
        stats.update(coarse_stats)
    stats.update(compare_with_previous(frame, layout.pseudo_labels(r - 1)))
    stats["curves"] = threshold_curves(gates["agreement"].label, gates["agreement"].score.astype(np.int64), ens_u,
                                       n_members, truth, D)
    if truth is not None:
        stats["gates_at_equal_coverage"] = compare_gates(gates, truth, D)
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
               if is_done(d) or has_weights(d)]
    if started and path.is_file() and path.read_text() != new_text:
        raise StageError(f"{path} is what round {r}'s members ({started[0]}, ...) were trained on; it is not "
                         f"rewritten with other pseudo-labels: start a new run with name={new_run_name(cfg)}")


def gate_inputs(cfg: PipelineConfig, loaded, D: np.ndarray, num_classes: int, frame_aware_members: bool):
    """(test predictions, member labels (M, N), member U (M, N), ensemble U (N,), every gate) of a loaded round
    (`load_round`); with `frame_aware_members` each member's distributions are first replaced by their
    frame-aware ones (the frame_bayes decoder's mean field; the round must be loaded with that decoder)."""
    preds = loaded.test
    if frame_aware_members:
        if loaded.frame_prior is None:
            raise StageError("pseudo.frame_aware needs the members' labelled validation predictions (to fit w)")
        preds = replace(preds, member_views=None, members=[
            frame_aware(m, preds.frame_ids, loaded.frame_prior, "frame_bayes") for m in preds.members])
    labels, member_u = member_labels_and_u(preds.members, sigma=cfg.decoding.sigma)
    ens_u = ensemble_u(preds, cfg.decoding.sigma)
    gates = all_gates(preds, loaded.val, labels, member_u, ens_u, D, cfg.pseudo, num_classes)
    return preds, labels, member_u, ens_u, gates


def all_gates(preds: EnsemblePredictions, val: EnsemblePredictions | None, labels: np.ndarray, member_u: np.ndarray,
              ens_u: np.ndarray, D: np.ndarray, p: PseudoLabelConfig, num_classes: int) -> dict[str, Gate]:
    """Every gate of src/gates.py at the configured thresholds; avgk_set_size only when the members saved
    set-head scores on test and validation (its threshold makes the validation sets average p.avgk_k)."""
    mean = preds.mean
    gates = {"agreement": agreement_gate(labels, member_u, p.min_votes, num_classes),
             "agreement_u": agreement_u_gate(labels, member_u, ens_u, p.min_votes, p.u_threshold, num_classes),
             "expected_distance": expected_distance_gate(mean, D, p.tau),
             "max_prob": max_probability_gate(mean, p.prob_threshold)}
    if preds.set_scores is not None and val is not None and val.set_scores is not None:
        threshold = fit_avgk_threshold(np.mean(val.set_scores, axis=0), p.avgk_k)
        gates["avgk_set_size"] = avgk_set_size_gate(mean, np.mean(preds.set_scores, axis=0), threshold,
                                                    p.max_set_size)
    return gates


def coarse_pseudo_labels(preds: EnsemblePredictions, labels: np.ndarray, ens_u: np.ndarray, accepted: np.ndarray,
                         p: PseudoLabelConfig, taxonomy, truth: np.ndarray | None) -> tuple[pd.DataFrame, dict]:
    """Rows for the ROIs the gate rejected where at least p.min_votes members agree on a genus, family or
    order (down to p.coarse_min_rank): target_taxon = that taxon, concept_name = the ensemble's most probable
    concept under it; and their stats (count per rank; with the truth, the share whose true concept lies under
    the taxon)."""
    agreed = coarse_agreement(labels, taxonomy, p.min_votes)
    ranks = COARSE_RANKS[:COARSE_RANKS.index(p.coarse_min_rank) + 1]
    rows = ~accepted & np.isin(agreed.rank, ranks)
    concept = np.where(agreed.mask[rows], preds.mean[rows], -1.0).argmax(axis=1)
    frame = pd.DataFrame({
        "annotation_id": preds.annotation_id[rows].astype(np.int64),
        "concept_name": np.asarray(taxonomy.names, dtype=object)[concept],
        "votes": agreed.votes[rows], "agreement": np.round(agreed.votes[rows] / len(labels), 4),
        "U": np.round(ens_u[rows], 6), "target_taxon": agreed.name[rows]})
    stats = {"coarse_count": int(rows.sum()),
             "coarse_by_rank": {rank: int((agreed.rank[rows] == rank).sum()) for rank in ranks}}
    if truth is not None:
        stats["coarse_precision"] = float(agreed.mask[rows, truth[rows]].mean()) if rows.any() else None
    return frame, stats


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
