"""bench.context_diagnosis: the habitat read-out's Bayes rule and the cross-frame view swap, on tiny arrays."""
import numpy as np
import pytest

from bench import context_diagnosis as cd


def test_habitat_posterior_counts_train_rois_with_smoothing():
    conditional, prior = cd.habitat_posterior(np.array([0, 0, 1]), np.array([2, 2, 0]), n_keys=2, n_classes=3,
                                              smoothing=0.5)
    counts = np.array([[0.5, 0.5, 2.5], [1.5, 0.5, 0.5]])  # evaluated by hand
    assert conditional == pytest.approx(counts / counts.sum(1, keepdims=True))
    assert prior == pytest.approx(counts.sum(0) / counts.sum())


def test_with_habitat_is_bayes_rule_per_row():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    conditional = np.array([[0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    prior = np.array([0.5, 0.25, 0.25])
    out = cd.with_habitat(probs, conditional, prior)
    first = np.array([0.6 * 0.1 / 0.5, 0.3 * 0.8 / 0.25, 0.1 * 0.1 / 0.25])
    assert out[0] == pytest.approx(first / first.sum())
    assert out[0].argmax() == 1  # the habitat overturns the ROI's first choice
    second = probs[1] / prior
    assert out[1] == pytest.approx(second / second.sum())  # an uninformative habitat leaves only the prior's division


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_foreign_permutation_takes_every_view_from_another_frame(seed):
    frames = np.array([7, 7, 7, 3, 3, 9, 1, 1, 5, 5, 2])
    perm = cd.foreign_permutation(frames, seed)
    assert sorted(perm) == list(range(len(frames)))  # a permutation: every ROI's view is used once
    assert (frames[perm] != frames).all()
    with pytest.raises(ValueError, match="one frame holds 3 of 5"):
        cd.foreign_permutation(np.array([1, 1, 1, 2, 3]))


def test_diagnosis_table_lists_every_condition():
    row = {"accuracy": 0.5, "mean_distance": 3.0, "q1": 0.2, "q2": 0.4, "q3": 0.6, "q4": 0.8}
    text = cd.diagnosis_table({"reference": row, "twin: all views": row})
    assert "| reference | 0.500 | 3.00 | 0.20 / 0.40 / 0.60 / 0.80 |" in text and "twin: all views" in text


def test_cli_names_a_missing_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cd.main(["--root", str(tmp_path), "--twin", str(tmp_path)])
    assert f"{tmp_path / 'dataset_test.json'} not found" in capsys.readouterr().err
