"""Error-profile figures against direct evaluations on tiny hand-made inputs."""
import numpy as np
import pytest

from src.synthetic import error_profile as ep
from src.taxonomy import distance_matrix, load_taxonomy

TAX = load_taxonomy()
D = distance_matrix(TAX)
I = TAX.index


def test_operating_point_by_hand():
    truth = np.array([I("Sebastes"), I("Sebastes"), I("Porifera"), I("Farrea")])
    pred = np.array([I("Sebastes"), I("Sebastes diploproa"), I("Sebastes"), I("Farrea")])
    out = ep.operating_point(truth, pred, D)
    d1, d2 = D[I("Sebastes"), I("Sebastes diploproa")], D[I("Porifera"), I("Sebastes")]
    assert d1 == 1
    assert out["accuracy"] == 0.5 and out["mean_distance"] == pytest.approx((d1 + d2) / 4)
    assert out["error_distance"] == pytest.approx((d1 + d2) / 2)
    assert out["errors_within_2"] == 0.5 and out["distinct_labels"] == 3


def test_error_placement_and_types():
    # Sebastes diploproa -> Sebastes: too coarse, same genus; Sebastes -> Sebastes diploproa: too fine;
    # Farrea -> Staurocalyptus: lateral inside the class Hexactinellida; Farrea -> Sebastes: kingdom only.
    truth = np.array([I("Sebastes diploproa"), I("Sebastes"), I("Farrea"), I("Farrea"), I("Farrea")])
    pred = np.array([I("Sebastes"), I("Sebastes diploproa"), I("Staurocalyptus"), I("Sebastes"), I("Farrea")])
    out = ep.error_placement(truth, pred, TAX)
    assert out["within_genus"] == pytest.approx(2 / 4)  # only the two Sebastes errors share a set genus
    assert out["within_class"] == pytest.approx(3 / 4) and out["within_phylum"] == pytest.approx(3 / 4)
    assert out["kingdom_only"] == pytest.approx(1 / 4)
    assert out["too_coarse"] == pytest.approx(1 / 4) and out["too_fine"] == pytest.approx(1 / 4)
    assert out["lateral"] == pytest.approx(2 / 4)


def test_rank_accuracy_counts_only_truths_set_at_the_rank():
    truth = np.array([I("Porifera"), I("Sebastes diploproa")])
    pred = np.array([I("Farrea"), I("Sebastes")])
    out = ep.rank_accuracy(truth, pred, TAX)
    assert out["phylum"] == 1.0  # both in the true phylum
    assert out["genus"] == 1.0  # Porifera has no genus: only the Sebastes row counts
    assert out["species"] == 0.0


def test_seed_agreement_by_hand():
    truth = np.array([0, 1, 2, 3])
    a, b, c = np.array([0, 5, 5, 3]), np.array([0, 5, 6, 9]), np.array([0, 5, 2, 9])
    out = ep.seed_agreement(truth, [a, b, c])
    # error sets {1,2}, {1,2,3}, {1,3}: Jaccard 2/3, 1/3, 2/3
    assert out["jaccard"] == pytest.approx(5 / 9)
    assert out["all_wrong"] == pytest.approx(1 / 4)
    # both wrong: (a,b) rows 1,2 -> same 5 at row 1 only; (a,c) row 1 -> same; (b,c) rows 1,3 -> same both
    assert out["both_wrong_same_label"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert out["all_agree_coverage"] == pytest.approx(2 / 4) and out["all_agree_precision"] == pytest.approx(1 / 2)


def test_frame_clustering_by_hand():
    truth = np.zeros(6, int)
    pred = np.array([1, 1, 0, 0, 0, 1])
    frames = np.array([0, 0, 1, 1, 2, 2])
    # base error rate 3/6; ROIs with a wrong sibling: 0, 1 (frame 0) and 4 (frame 2): wrong 2 of 3
    assert ep.frame_clustering(truth, pred, frames) == pytest.approx((2 / 3) / 0.5)


def test_accuracy_by_size_and_calibration():
    truth = np.zeros(8, int)
    pred = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    long_side = np.array([10, 20, 40, 50, 100, 120, 300, 400.0])
    out = ep.accuracy_by_size(truth, pred, long_side)
    assert out["q1"] == 0.0 and out["q2"] == 0.5 and out["q3"] == 1.0 and out["q4"] == 1.0
    assert out["px_0_32"] == 0.0 and out["px_32_64"] == 0.5 and out["px_256_inf"] == 1.0
    probs = np.array([[0.4, 0.3, 0.3], [0.9, 0.1, 0.0], [0.2, 0.7, 0.1]])
    cal = ep.calibration_bins(np.array([0, 0, 0]), probs)
    assert cal == {"p_0_0.5": 1.0, "p_0.5_0.8": 0.0, "p_0.8_0.95": 1.0}


def test_frame_geometry_and_spearman():
    frames = np.array([0, 0, 0, 1, 2])
    labels = np.array([3, 3, 4, 5, 6])
    box = np.array([[10, 5], [20, 20], [30, 10], [40, 40], [50, 10]], float)
    frame_wh = np.full((5, 2), 100.0)
    out = ep.frame_geometry(frames, labels, box, frame_wh)
    assert out["rois_per_frame"] == pytest.approx(5 / 3) and out["single_roi_frames"] == pytest.approx(2 / 3)
    assert out["single_taxon_frames"] == pytest.approx(2 / 3) and out["taxa_per_frame"] == pytest.approx(4 / 3)
    assert out["rois_in_single_taxon_frames"] == pytest.approx(2 / 5) and out["rel_median"] == pytest.approx(0.3)
    assert ep.spearman(np.array([1, 2, 3.0]), np.array([10, 30, 20.0])) == pytest.approx(0.5)
