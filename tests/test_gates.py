"""Pseudo-label gates, equal-coverage comparison, coarse agreement and set targets, average-K set sizes."""
import numpy as np
import pandas as pd
import pytest

from src.gates import (
    EQUAL_COVERAGES,
    Gate,
    agreement_gate,
    agreement_u_gate,
    avgk_set_size_gate,
    coarse_agreement,
    compare_gates,
    expected_distance_gate,
    fit_avgk_threshold,
    max_probability_gate,
    precision_coverage_curve,
    pseudo_label_targets,
    set_sizes,
    threshold_at_coverage,
)
from src.taxonomy import taxonomy_tree

# 3 members x 4 ROIs
LABELS = np.array([[0, 1, 2, 0], [0, 1, 1, 2], [0, 2, 0, 1]])
MEMBER_U = np.array([[0.9, 0.5, 0.2, 0.3], [0.8, 0.6, 0.9, 0.4], [0.7, 0.1, 0.1, 0.2]])


def test_agreement_gates():
    gate = agreement_gate(LABELS, MEMBER_U, min_votes=2, num_classes=3)
    # ROIs 2 and 3 are 1-1-1 ties, won by the class of the most certain voter (U 0.9, then 0.4)
    assert gate.label.tolist() == [0, 1, 1, 2] and gate.score.tolist() == [3, 2, 1, 1]
    assert gate.keep.tolist() == [True, True, False, False]
    ens_u = np.array([0.95, 0.4, 0.99, 0.99])
    gate = agreement_u_gate(LABELS, MEMBER_U, ens_u, min_votes=2, u_threshold=0.5, num_classes=3)
    assert gate.score[:2].tolist() == [0.95, 0.4] and np.isneginf(gate.score[2:]).all()
    assert gate.keep.tolist() == [True, False, False, False]


def test_expected_distance_and_max_probability_gates():
    D = np.array([[0, 2, 6], [2, 0, 6], [6, 6, 0]])
    probs = np.array([[0.4, 0.35, 0.25], [0.1, 0.1, 0.8], [0.5, 0.0, 0.5]])
    # risks R[n, k] = sum_j p_j D[j, k]: row 0 -> [2.2, 2.3, 4.5]; row 1 -> [5.0, 5.0, 1.2]; row 2 -> [3, 4, 3]
    gate = expected_distance_gate(probs, D, tau=2.5)
    assert gate.label.tolist() == [0, 2, 0]
    assert np.allclose(-gate.score, [2.2, 1.2, 3.0]) and gate.keep.tolist() == [True, True, False]
    gate = max_probability_gate(probs, threshold=0.5)
    assert gate.label.tolist() == [0, 2, 0] and gate.score.tolist() == [0.4, 0.8, 0.5]
    assert gate.keep.tolist() == [False, True, True]


def test_precision_coverage_and_threshold_at_coverage():
    score = np.array([0.5, 0.9, -np.inf, 0.1, 0.5])
    correct = np.array([0, 1, 1, 0, 1])
    thresholds, coverage, precision = precision_coverage_curve(score, correct)
    assert thresholds.tolist() == [0.9, 0.5, 0.1]
    assert np.allclose(coverage, [0.2, 0.6, 0.8]) and np.allclose(precision, [1, 2 / 3, 0.5])
    distances = np.array([4.0, 0.0, 0.0, 6.0, 0.0])  # mean distance of the accepted instead of precision
    assert np.allclose(precision_coverage_curve(score, distances)[2], [0, 4 / 3, 2.5])
    assert threshold_at_coverage(score, 0.2) == 0.9
    assert threshold_at_coverage(score, 0.4) == 0.5  # the tie at 0.5 accepts 60 %
    assert threshold_at_coverage(score, 0.61) == 0.1 and np.isneginf(threshold_at_coverage(score, 1.0))
    # equal coverage: two gates compared at the threshold each needs to accept 40 %
    other = np.array([0.2, 0.3, 0.8, 0.1, 0.7])
    keep = other >= threshold_at_coverage(other, 0.4)
    assert keep.sum() == 2 and correct[keep].mean() == 1.0
    with pytest.raises(ValueError):
        threshold_at_coverage(score, 0.0)


def test_coarse_agreement(tiny_taxonomy):
    # concepts: 0 'A a', 1 'A' (genus), 2 'B b', 3 'P1' (phylum), 4 'Odd', 5 'Q q'
    labels = np.array([[0, 0, 0, 0, 4, 5, 0],
                       [0, 1, 1, 3, 4, 3, 2],
                       [0, 1, 2, 5, 2, 0, 4]])
    out = coarse_agreement(labels, tiny_taxonomy, min_votes=2)
    assert out.name.tolist() == ["A a", "A", "A", "P1", "Odd", "P1", "F1"]
    assert out.rank.tolist() == ["concept", "concept", "genus", "phylum", "concept", "phylum", "family"]
    assert out.votes.tolist() == [3, 2, 2, 2, 2, 2, 2]
    assert out.mask[1].tolist() == [False, True, False, False, False, False]  # exact agreement on the genus concept
    assert out.mask[2].tolist() == [True, True, False, False, False, False]  # 'A a' + 'A': the genus A
    assert out.mask[6].tolist() == [True, True, True, False, False, False]
    tree = taxonomy_tree(tiny_taxonomy)
    assert (tree.target_table[6 + out.node] == out.mask).all()
    strict = coarse_agreement(labels, tiny_taxonomy, min_votes=3, tree=tree)
    assert strict.name.tolist() == ["A a", "A", "F1", "K", "P1", "K", "P1"]
    assert strict.rank.tolist()[1:4] == ["genus", "family", "kingdom"] and strict.mask[3].all()
    with pytest.raises(ValueError):
        coarse_agreement(labels, tiny_taxonomy, min_votes=4)


def test_pseudo_label_targets(tiny_taxonomy):
    tree = taxonomy_tree(tiny_taxonomy)
    table = pd.DataFrame({"annotation_id": [1, 2, 3, 4], "concept_name": ["A a", "B b", "Q q", "A"],
                          "target_taxon": ["", "F1", np.nan, "P1"]})
    targets, masks = pseudo_label_targets(table, tiny_taxonomy)
    assert targets.tolist() == [0, 6 + tree.taxon_node("F1"), 5, 6 + tree.taxon_node("P1")]
    assert masks.sum(axis=1).tolist() == [1, 3, 1, 5] and masks[0, 0] and masks[2, 5]
    plain, _ = pseudo_label_targets(table.drop(columns="target_taxon"), tiny_taxonomy)
    assert plain.tolist() == [0, 2, 5, 1]
    with pytest.raises(ValueError, match="Nope"):
        pseudo_label_targets(table.assign(target_taxon=["", "Nope", "", ""]), tiny_taxonomy)
    with pytest.raises(ValueError, match="Zz"):
        pseudo_label_targets(table.assign(concept_name=["Zz", "A", "A", "A"]), tiny_taxonomy)


def test_avgk_threshold_and_set_sizes():
    scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.1], [0.3, 0.25, 0.05]])
    lam = fit_avgk_threshold(scores, k=1.0)  # 3 concepts in all: the 3rd largest score
    assert lam == 0.7 and set_sizes(scores, lam).tolist() == [2, 1, 0]
    lam = fit_avgk_threshold(scores, k=2.0)
    assert lam == 0.2 and set_sizes(scores, lam).mean() == 2.0
    with pytest.raises(ValueError):
        fit_avgk_threshold(scores, k=4.0)
    gate = avgk_set_size_gate(np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]]), scores, 0.25, 1)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    assert gate.label.tolist() == [1, 0, 2]  # sets of 2, 1 and 2 concepts; a set's top logit breaks size ties
    assert gate.score == pytest.approx([-2 + sigmoid(0.9), -1 + sigmoid(0.7), -2 + sigmoid(0.3)])
    assert gate.keep.tolist() == [False, True, False]
    empty = avgk_set_size_gate(np.eye(3), scores, 0.5, 1)  # row 2: no logit >= 0.5, an empty set
    assert empty.keep.tolist() == [False, True, False] and empty.score.argmin() == 2 and empty.score[2] < -3


def test_gates_compared_at_equal_coverage():
    D = np.array([[0, 2, 6], [2, 0, 6], [6, 6, 0]])
    truth = np.array([0, 1, 2, 0, 1])
    sure = Gate(np.array([0, 1, 0, 2, 1]), np.array([0.9, 0.8, 0.7, 0.6, -np.inf]), np.zeros(5, bool))
    votes = Gate(np.array([0, 0, 2, 0, 1]), np.array([3.0, 2, 2, 1, 1]), np.zeros(5, bool))
    rows = {(r["gate"], r["target_coverage"]): r for r in compare_gates({"sure": sure, "votes": votes}, truth, D,
                                                                        coverages=(0.2, 0.4, 0.6, 0.9))}
    assert rows["sure", 0.4] == {"gate": "sure", "target_coverage": 0.4, "threshold": 0.8, "coverage": 0.4,
                                 "count": 2, "precision": 1.0, "mean_distance": 0.0}
    assert rows["sure", 0.6]["precision"] == pytest.approx(2 / 3) and rows["sure", 0.6]["mean_distance"] == 2.0
    # 90 % is out of reach (one -inf score): all the finite ones, no threshold
    assert rows["sure", 0.9]["threshold"] is None and rows["sure", 0.9]["coverage"] == 0.8
    assert rows["sure", 0.9]["mean_distance"] == pytest.approx((0 + 0 + 6 + 6) / 4)
    # ties: asking 40 % of a vote count accepts the three ROIs with >= 2 votes
    assert rows["votes", 0.4]["count"] == 3 and rows["votes", 0.4]["precision"] == pytest.approx(2 / 3)
    assert rows["votes", 0.2]["count"] == 1 and rows["votes", 0.9]["coverage"] == 1.0
    assert EQUAL_COVERAGES == (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
