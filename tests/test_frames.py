"""Frame-aware decoding: co-occurrence prior, mean-field steps, the fitted weight."""
import numpy as np
import pytest

from src.frames import cooccurrence_prior, fit_frame_weight, frame_mean_field


def test_cooccurrence_prior_by_hand():
    # frame 10: labels 0, 0, 1; frame 20: 1, 2; frame 30: a lone 2 (ignored); an unlabelled ROI in frame 20
    frames = np.array([10, 10, 10, 20, 20, 30, 20])
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    # ordered sibling pairs weigh 1/(n - 1): frame 10 gives (0,0) x2, (0,1) x2, (1,0) x2 at 1/2; frame 20 (1,2), (2,1)
    K = cooccurrence_prior(frames, labels, num_classes=4, smoothing=0.0)
    assert np.allclose(K[:3, :3], [[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 1, 0]]) and np.allclose(K[3], 0.25)
    smooth = cooccurrence_prior(frames, labels, num_classes=4, smoothing=1.0)
    assert np.allclose(smooth[0], np.array([2, 2, 1, 1]) / 6) and np.allclose(smooth.sum(axis=1), 1)


def test_mean_field_step_by_hand():
    K = np.array([[0.8, 0.2], [0.3, 0.7]])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    frames = np.array([5, 5, 7])  # ROI 2 is alone
    q = frame_mean_field(probs, frames, K, weight=0.5)
    # ROI 1: sibling q = [0.9, 0.1]; m = K @ [0.9, 0.1] = [0.74, 0.34]; factor 0.5 + 0.5 m = [0.87, 0.67]
    expected_1 = np.array([0.4 * 0.87, 0.6 * 0.67]) / (0.4 * 0.87 + 0.6 * 0.67)
    # ROI 0: sibling [0.4, 0.6]; m = [0.44, 0.54]; factor [0.72, 0.77]
    expected_0 = np.array([0.9 * 0.72, 0.1 * 0.77]) / (0.9 * 0.72 + 0.1 * 0.77)
    assert np.allclose(q[0], expected_0) and np.allclose(q[1], expected_1)
    assert np.array_equal(q[2], probs[2])  # alone in its frame
    assert np.allclose(frame_mean_field(probs, frames, K, weight=0.0, iterations=3), probs, rtol=0, atol=1e-15)


def direct_mean_field(probs, frames, K, w, iterations):
    """The formula ROI by ROI."""
    q = probs.copy()
    for _ in range(iterations):
        new = np.empty_like(q)
        for i in range(len(q)):
            siblings = [j for j in range(len(q)) if frames[j] == frames[i] and j != i]
            if not siblings:
                new[i] = probs[i]
                continue
            m = np.array([sum(K[c, c2] * np.mean([q[j, c2] for j in siblings]) for c2 in range(K.shape[1]))
                          for c in range(K.shape[0])])
            new[i] = probs[i] * (1 - w + w * m)
            new[i] /= new[i].sum()
        q = new
    return q


def test_mean_field_matches_roi_by_roi_formula():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=17)
    frames = rng.integers(0, 6, size=17) * 3 + 100
    K = rng.dirichlet(np.ones(5), size=5)
    for w, it in [(0.3, 1), (0.8, 3), (1.0, 2)]:
        assert np.allclose(frame_mean_field(probs, frames, K, w, it), direct_mean_field(probs, frames, K, w, it))


def test_confident_siblings_flip_an_uncertain_roi():
    K = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    probs = np.array([[0.95, 0.03, 0.02], [0.9, 0.05, 0.05], [0.4, 0.45, 0.15]])
    q = frame_mean_field(probs, np.zeros(3), K, weight=0.5)
    assert probs[2].argmax() == 1 and q[2].argmax() == 0
    assert q[:2].argmax(axis=1).tolist() == [0, 0]  # the confident ones stay
    with pytest.raises(ValueError):
        frame_mean_field(probs, np.zeros(3), K, weight=1.5)


def test_fit_frame_weight_picks_helpful_context_and_zero_when_it_hurts():
    D = np.array([[0, 4], [4, 0]])
    K_same = np.array([[0.9, 0.1], [0.1, 0.9]])
    # frames of three, two confident siblings of the true label and one ROI leaning to the wrong label
    probs = np.tile([[0.9, 0.1], [0.85, 0.15], [0.45, 0.55]], (4, 1))
    frames = np.repeat(np.arange(4), 3)
    labels = np.zeros(12, dtype=int)
    w, distances = fit_frame_weight(probs, labels, frames, K_same, D, grid=[0.0, 0.5, 1.0])
    assert w > 0 and distances[0] == pytest.approx(4 / 3) and distances.min() == 0
    # the same predictions when each frame's third ROI really is of the other label: context only hurts
    w, distances = fit_frame_weight(probs, np.tile([0, 0, 1], 4), frames, K_same, D, grid=[0.0, 0.5, 1.0],
                                    decode="argmax")
    assert w == 0.0 and distances[0] == 0
