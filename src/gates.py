"""Pseudo-label gates, their comparison at equal coverage, coarse (taxon) pseudo-labels, average-K set sizes.

Pure functions on arrays. M ensemble members, N test ROIs, C concepts in the canonical order.

Every gate returns a `Gate` (label, score, keep): the label it would give, a confidence score where
larger is more confident (a ROI is accepted at threshold t when score >= t; -inf never is), and the
acceptance at the gate's own threshold. The scores let gates be compared at equal coverage:
`threshold_at_coverage` gives each gate the threshold that accepts a share of the ROIs, and
`precision_coverage_curve` the precision (or mean distance) of the accepted ROIs at every threshold.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from src.ensemble import decode_bayes, expected_distance, vote
from src.taxonomy import Taxonomy, TaxonomyTree, taxonomy_tree


class Gate(NamedTuple):
    label: np.ndarray  # (N,) int64 pseudo-label
    score: np.ndarray  # (N,) float64, larger = more confident
    keep: np.ndarray  # (N,) bool, accepted at the gate's threshold


# ------------------------------------------------------------------------------------------ gates
def agreement_gate(member_labels: np.ndarray, member_u: np.ndarray, min_votes: int,
                   num_classes: int | None = None) -> Gate:
    """Majority label of the members (ties by their own U, `src.ensemble.vote`); score = its vote count;
    accepted when at least `min_votes` of the M members agree."""
    label, votes = vote(member_labels, member_u, num_classes)
    return Gate(label, votes.astype(np.float64), votes >= min_votes)


def agreement_u_gate(member_labels: np.ndarray, member_u: np.ndarray, ensemble_u: np.ndarray, min_votes: int,
                     u_threshold: float, num_classes: int | None = None) -> Gate:
    """The project's gate: at least `min_votes` agree and the ensemble U (GMU) is >= u_threshold.

    score = U where the votes suffice, -inf elsewhere (those ROIs are never accepted)."""
    label, votes = vote(member_labels, member_u, num_classes)
    score = np.where(votes >= min_votes, np.asarray(ensemble_u, dtype=np.float64), -np.inf)
    return Gate(label, score, score >= u_threshold)


def expected_distance_gate(probs: np.ndarray, D: np.ndarray, tau: float) -> Gate:
    """Bayes-risk gate: r(x) = min_c sum_j p_j D[j, c]; label = the Bayes label (the argmin); accepted
    when r(x) <= tau. score = -r(x)."""
    risk = expected_distance(probs, D).min(axis=1)
    return Gate(decode_bayes(probs, D), -risk, risk <= tau)


def max_probability_gate(probs: np.ndarray, threshold: float) -> Gate:
    """label = argmax p, score = max p, accepted when max p >= threshold."""
    probs = np.asarray(probs, dtype=np.float64)
    score = probs.max(axis=1)
    return Gate(probs.argmax(axis=1), score, score >= threshold)


def avgk_set_size_gate(probs: np.ndarray, set_scores: np.ndarray, threshold: float, max_set_size: int) -> Gate:
    """Average-K gate: the set {c : set score >= threshold} of the set head (`set_sizes`; its sigmoids or
    logits); label = argmax p, accepted when the set holds 1 to `max_set_size` concepts. Score: -set size plus
    a sigmoid of the largest set score (in (0, 1): it orders ROIs of one set size, so equal-coverage cuts need
    no ties), with an empty set (nothing above the threshold: the head is sure of nothing) below every other."""
    set_scores = np.asarray(set_scores, dtype=np.float64)
    sizes = set_sizes(set_scores, threshold)
    rank = np.where(sizes == 0, set_scores.shape[1] + 1, sizes).astype(np.float64)
    score = -rank + 1.0 / (1.0 + np.exp(-set_scores.max(axis=1)))
    return Gate(np.asarray(probs).argmax(axis=1), score, (sizes >= 1) & (sizes <= max_set_size))


# ------------------------------------------------------------------------------- equal coverage
def precision_coverage_curve(score: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, coverage, precision), one entry per distinct score above -inf, thresholds descending.

    Accepting score >= thresholds[i] covers coverage[i] of the N ROIs with precision[i] = mean of
    `correct` over the accepted ones (`correct` may be bool, or e.g. per-ROI distances for the mean
    distance of the accepted pseudo-labels)."""
    score = np.asarray(score, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if score.shape != correct.shape or score.ndim != 1:
        raise ValueError(f"score and correct must both be (N,), got {score.shape} and {correct.shape}")
    order = np.argsort(-score, kind="stable")
    s, c = score[order], np.cumsum(correct[order])
    last_of_tie = np.flatnonzero((s > -np.inf) & np.append(s[1:] != s[:-1], True))
    accepted = last_of_tie + 1
    return s[last_of_tie], accepted / len(score), c[last_of_tie] / accepted


def threshold_at_coverage(score: np.ndarray, coverage: float) -> float:
    """The largest threshold t whose gate score >= t accepts at least `coverage` of the ROIs.

    That is the ceil(coverage * N)-th largest score; ties at t may accept more than asked. -inf when
    the gate cannot reach the coverage (too many ROIs score -inf)."""
    score = np.asarray(score, dtype=np.float64)
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    return _kth_largest(score, max(1, int(np.ceil(coverage * len(score) - 1e-9))))


EQUAL_COVERAGES = tuple(np.round(np.arange(0.2, 0.95, 0.1), 2).tolist())  # 0.2, 0.3, ..., 0.9


def compare_gates(gates: dict[str, Gate], truth: np.ndarray, D: np.ndarray,
                  coverages=EQUAL_COVERAGES) -> list[dict]:
    """Every gate at equal coverage: per (gate, target coverage) the threshold `threshold_at_coverage` gives,
    the coverage it reaches (ties may add ROIs), the precision (label == truth) and the mean distance
    D[truth, label] of the accepted ROIs. A gate that cannot reach a coverage (too many -inf scores) gets
    threshold None and the coverage of all its finite scores."""
    truth = np.asarray(truth, dtype=np.int64)
    rows = []
    for name, gate in gates.items():
        for coverage in coverages:
            t = threshold_at_coverage(gate.score, coverage)
            keep = gate.score >= t if t > -np.inf else gate.score > -np.inf
            row = {"gate": name, "target_coverage": coverage, "threshold": t if t > -np.inf else None,
                   "coverage": float(keep.mean()), "count": int(keep.sum()), "precision": None, "mean_distance": None}
            if keep.any():
                row.update(precision=float((gate.label[keep] == truth[keep]).mean()),
                           mean_distance=float(D[truth[keep], gate.label[keep]].mean()))
            rows.append(row)
    return rows


def _kth_largest(values: np.ndarray, k: int) -> float:
    return float(-np.partition(-np.ravel(values), k - 1)[k - 1])


# ----------------------------------------------------------------------------- coarse pseudo-labels
class CoarseAgreement(NamedTuple):
    rank: np.ndarray  # (N,) object: 'concept' (exact agreement), a rank of RANKS, or 'root'
    name: np.ndarray  # (N,) object: the concept or taxon name
    mask: np.ndarray  # (N, C) bool: the concepts under it
    node: np.ndarray  # (N,) int64 node of the taxonomy tree; training target id = C + node
    votes: np.ndarray  # (N,) members whose label lies under it


def coarse_agreement(labels: np.ndarray, taxonomy: Taxonomy, min_votes: int,
                     tree: TaxonomyTree | None = None) -> CoarseAgreement:
    """Per ROI, the deepest node of the taxonomy tree under which at least `min_votes` members' labels lie.

    labels (M, N) member labels. A concept leaf (exact agreement) is deeper than its taxon, so exact
    agreement returns the concept; otherwise the deepest agreeing taxon (genus, family, ...), or the root
    (mask of all concepts) when nothing below agrees. With min_votes <= M / 2 two branches can both
    agree: the deeper wins, then the one with more votes, then the lower node index."""
    labels = np.asarray(labels, dtype=np.int64)
    tree = tree or taxonomy_tree(taxonomy)
    M, N = labels.shape
    C = tree.num_concepts
    if not 1 <= min_votes <= M:
        raise ValueError(f"min_votes must be in [1, {M}], got {min_votes}")
    counts = np.zeros((N, C), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(N), (M, N)), labels), 1)
    votes = counts @ tree.member.T.astype(np.int64)  # (N, V)
    key = np.where(votes >= min_votes, tree.depth[None, :] * (M + 1) + votes, -1)
    node = key.argmax(axis=1)
    return CoarseAgreement(np.asarray(tree.ranks, dtype=object)[node], np.asarray(tree.names, dtype=object)[node],
                           tree.member[node], node, votes[np.arange(N), node])


def pseudo_label_targets(table: pd.DataFrame, taxonomy: Taxonomy,
                         tree: TaxonomyTree | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of a pseudo-label table: (target ids (N,) int64, masks (N, C) bool).

    Columns: concept_name, and optionally target_taxon. A row whose target_taxon is empty trains on its
    concept (target id = the concept index < C, mask the singleton); a row naming a taxon trains on the
    set of concepts under that taxon (target id C + node, `TaxonomyTree.target_table`), with the set NLL
    of `src.losses.SetTargetLoss`. Unknown concept or taxon names raise, naming a few."""
    tree = tree or taxonomy_tree(taxonomy)
    targets = taxonomy.indices(table["concept_name"])
    if (targets < 0).any():
        raise ValueError(f"unknown concept names {sorted(set(table['concept_name'][targets < 0]))[:5]}")
    if "target_taxon" in table.columns:
        taxon = table["target_taxon"].fillna("").astype(str).str.strip()
        coarse = (taxon != "").to_numpy()
        nodes, unknown = {}, []
        for name in taxon[coarse].unique():
            try:
                nodes[name] = tree.taxon_node(name)
            except KeyError:
                unknown.append(name)
        if unknown:
            raise ValueError(f"target_taxon names that are not taxa: {sorted(unknown)[:5]}")
        targets = targets.copy()
        targets[coarse] = tree.num_concepts + taxon[coarse].map(nodes).to_numpy(dtype=np.int64)
    return targets, tree.target_table[targets]


# ------------------------------------------------------------------------------ average-K set head
def fit_avgk_threshold(scores: np.ndarray, k: float) -> float:
    """Threshold lambda on the set head's scores (N, C) so that sets {c : score >= lambda} average k
    concepts on these (validation) rows: the round(k * N)-th largest score (ties may add a few)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = int(round(k * scores.shape[0]))
    if not 1 <= n <= scores.size:
        raise ValueError(f"k * N = {k} * {scores.shape[0]} must lie in [1, N * C]")
    return _kth_largest(scores, n)


def set_sizes(scores: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) number of concepts with score >= threshold: the set size, an uncertainty score (small = sure)."""
    return (np.asarray(scores) >= threshold).sum(axis=1)
