"""Frame-aware decoding: the ROIs of one frame are usually the same taxon; let siblings inform each other.

Pure functions on arrays. N ROIs, C concepts; `frame_ids` (N,) is the frame (COCO image_id) of each ROI.

- `cooccurrence_prior`: K[c, c'] = P(a sibling ROI has label c' | this ROI has label c), from the
  training frames with at least two labelled ROIs, additively smoothed, rows summing to 1.
- `frame_mean_field`: q_i(c) ∝ p_i(c) * (1 - w + w * sum_c' K[c, c'] qbar_i(c')), qbar_i the mean of the
  siblings' q; one or a few synchronous steps. w = 0 and ROIs alone in their frame are left unchanged.
- `fit_frame_weight`: the w of a grid with the least mean distance of the decoded labels on validation frames.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from src.ensemble import decode_bayes


def _frames(frame_ids: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """(F, N) 0/1 frame-membership matrix and the (N,) number of ROIs in each ROI's frame."""
    frame_ids = np.asarray(frame_ids)
    if frame_ids.ndim != 1:
        raise ValueError(f"frame_ids must be (N,), got shape {frame_ids.shape}")
    _, frame, counts = np.unique(frame_ids, return_inverse=True, return_counts=True)
    n = len(frame_ids)
    membership = sp.csr_matrix((np.ones(n), (frame, np.arange(n))), shape=(len(counts), n))
    return membership, counts[frame]


def cooccurrence_prior(frame_ids: np.ndarray, labels: np.ndarray, num_classes: int,
                       smoothing: float = 1.0) -> np.ndarray:
    """(C, C) K[c, c'] = P(a sibling has label c' | this ROI has label c), rows summing to 1.

    Counted over the ordered pairs (i, j), i != j, of labelled ROIs (label >= 0) sharing a frame with at
    least one other labelled ROI; each pair weighs 1 / (n_f - 1), so every ROI spreads one unit over its
    siblings and a crowded frame counts once per ROI rather than once per pair. `smoothing` is added to
    every cell before the rows are normalised; a concept never seen in a multi-ROI frame gets the uniform
    row (smoothing > 0 gives it anyway)."""
    labels = np.asarray(labels, dtype=np.int64)
    known = labels >= 0
    membership, n_frame = _frames(np.asarray(frame_ids)[known])
    onehot = sp.csr_matrix((np.ones(known.sum()), (np.arange(known.sum()), labels[known])),
                           shape=(int(known.sum()), num_classes))
    per_frame = (membership @ onehot).toarray()  # (F, C) label counts per frame
    n = per_frame.sum(axis=1)
    weight = np.where(n >= 2, 1.0 / np.maximum(n - 1, 1), 0.0)
    pairs = per_frame.T @ (per_frame * weight[:, None]) - np.diag((per_frame * weight[:, None]).sum(axis=0))
    K = pairs + smoothing
    rows = K.sum(axis=1, keepdims=True)
    return np.where(rows > 0, K / np.where(rows > 0, rows, 1.0), 1.0 / num_classes)


def frame_mean_field(probs: np.ndarray, frame_ids: np.ndarray, K: np.ndarray, weight: float,
                     iterations: int = 1) -> np.ndarray:
    """(N, C) frame-aware distributions q from per-ROI probabilities p (N, C).

    Each step, for every ROI i with siblings S_i (the other ROIs of its frame):
        q_i(c) ∝ p_i(c) * (1 - w + w * m_i(c)),  m_i(c) = sum_c' K[c, c'] * mean_{j in S_i} q_j(c'),
    starting from q = p, all ROIs updated at once from the previous step's q. Frames are summed with one
    sparse product, no loop over ROIs. A ROI alone in its frame keeps p; w = 0 keeps every p."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    probs = np.asarray(probs, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    membership, n_frame = _frames(frame_ids)
    if len(n_frame) != len(probs):
        raise ValueError(f"{len(probs)} rows of probs but {len(n_frame)} frame ids")
    alone = n_frame == 1
    q = probs
    for _ in range(iterations):
        frame_sum = membership.T @ (membership @ q)  # (N, C): sum of q over each ROI's frame
        siblings_mean = (frame_sum - q) / np.maximum(n_frame - 1, 1)[:, None]
        factor = 1.0 - weight + weight * siblings_mean @ K.T
        factor[alone] = 1.0
        q = probs * factor
        q /= q.sum(axis=1, keepdims=True)
    return q


def fit_frame_weight(probs: np.ndarray, labels: np.ndarray, frame_ids: np.ndarray, K: np.ndarray, D: np.ndarray,
                     grid=np.linspace(0.0, 1.0, 11), decode: str = "bayes",
                     iterations: int = 1) -> tuple[float, np.ndarray]:
    """The weight w of `grid` whose frame-aware decoding has the least mean distance on labelled (validation)
    ROIs; returns (w, mean distance per grid value). `decode`: 'bayes' (argmin_k sum_j D[j, k] q_j) or
    'argmax'. Ties go to the smaller w (the less the decoder changes, the better at equal distance)."""
    if decode not in ("bayes", "argmax"):
        raise ValueError(f"decode must be 'bayes' or 'argmax', got {decode!r}")
    labels = np.asarray(labels, dtype=np.int64)
    grid = np.sort(np.asarray(grid, dtype=np.float64))
    distances = np.empty(len(grid))
    for g, w in enumerate(grid):
        q = frame_mean_field(probs, frame_ids, K, w, iterations)
        pred = decode_bayes(q, D) if decode == "bayes" else q.argmax(axis=1)
        distances[g] = D[labels, pred].mean()
    return float(grid[distances.argmin()]), distances
