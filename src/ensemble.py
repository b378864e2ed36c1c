"""Ensemble math on saved probability arrays: GMU, voting, decoders, calibration, taxonomy diffusion.

Everything here is a pure function (arrays in, arrays out, no I/O), so pseudo-labelling and decoding
run on the members' saved `test_probs.npz` in milliseconds (formulas: docs/method.md). Decoding a whole
ensemble (its saved predictions, frame priors, every decoder at once) sits one layer up, in src.decoding.

Shapes: M models (or heads), N ROIs, C classes in the canonical taxonomy order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from src.taxonomy import RANKS, Taxonomy

SIGMA_CONVENTIONS = ("top2_sigma", "sigma_at_top2_mu")  # the first is the default
DIFFUSION_ALPHA = 0.3  # the diffusion decoder's default a


def _check_probs(probs: np.ndarray, ndim: int, name: str = "probs") -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {probs.shape}")
    return probs


# --------------------------------------------------------------------------------------------- GMU
def gmu(probs: np.ndarray, sigma: str = "top2_sigma", eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Mean prediction and gated marginal uncertainty score U over M probability vectors per ROI.

    probs (M, N, C) -> (mu (N, C), U (N,)), with mu = mean_m P_m, sigma = unbiased std_m P_m,
        GMU = (mu_1st - mu_2nd) / (sigma_a + sigma_b + eps),   U = mu_1st * (1 - exp(-GMU)).
    `sigma` picks what sigma_a + sigma_b means (the paper's "sigma_max + sigma_max(2)" is ambiguous):
      'top2_sigma'        the two largest entries of the whole sigma vector (the team's code);
      'sigma_at_top2_mu'  sigma at the classes of mu_1st and mu_2nd (the other reading).
    With M = 1 there is no spread, and U = mu_1st by definition.
    """
    probs = _check_probs(probs, 3)
    if sigma not in SIGMA_CONVENTIONS:
        raise ValueError(f"sigma must be one of {SIGMA_CONVENTIONS}, got {sigma!r}")
    if probs.shape[2] < 2:
        raise ValueError("gmu needs at least 2 classes")
    mu = probs.mean(axis=0)
    order = np.argsort(-mu, axis=1, kind="stable")
    top1, top2 = order[:, 0], order[:, 1]
    rows = np.arange(mu.shape[0])
    mu1, mu2 = mu[rows, top1], mu[rows, top2]
    if probs.shape[0] == 1:
        return mu, mu1
    std = probs.std(axis=0, ddof=1)
    if sigma == "top2_sigma":
        spread = -np.partition(-std, 1, axis=1)[:, :2].sum(axis=1)
    else:
        spread = std[rows, top1] + std[rows, top2]
    # mu1 >= mu2, so the ratio is >= 0; with zero spread it is huge and U -> mu1 (certain ranking)
    score = (mu1 - mu2) / (spread + eps)
    return mu, mu1 * -np.expm1(-score)


def member_labels_and_u(members: list[np.ndarray], sigma: str = "top2_sigma") -> tuple[np.ndarray, np.ndarray]:
    """Per model: label = argmax of its own head mean, U = GMU over its own heads.

    members: list of M arrays (H_m, N, C) -> (labels (M, N) int64, U (M, N) float64)."""
    labels, scores = [], []
    for head_probs in members:
        mu, u = gmu(head_probs, sigma=sigma)
        labels.append(mu.argmax(axis=1))
        scores.append(u)
    return np.stack(labels).astype(np.int64), np.stack(scores)


# ------------------------------------------------------------------------------------------ voting
def vote(labels: np.ndarray, scores: np.ndarray, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote of M models per ROI, ties broken by U.

    labels (M, N) int class indices, scores (M, N) each model's own U for its label.
    Returns (label (N,), votes (N,) = number of models that voted for the winning label).
    Tie rule (the paper's "ties broken by U", read as "take the most certain prediction"): among the
    classes with the most votes, the winner is the class whose best voter has the highest U, i.e. the
    max of U over the models voting for it. If that is tied too, the lowest class index wins
    (deterministic; never model order).
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"labels and scores must both be (M, N); got {labels.shape} and {scores.shape}")
    n_models, n = labels.shape
    num_classes = int(num_classes if num_classes is not None else labels.max(initial=-1) + 1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    rows = np.broadcast_to(np.arange(n), (n_models, n))
    counts = np.zeros((n, num_classes), dtype=np.int64)
    np.add.at(counts, (rows, labels), 1)
    best_u = np.full((n, num_classes), -np.inf)
    np.maximum.at(best_u, (rows, labels), scores)
    votes = counts.max(axis=1)
    tie_score = np.where(counts == votes[:, None], best_u, -np.inf)
    return tie_score.argmax(axis=1), votes


# ---------------------------------------------------------------------------------------- decoders
def decode_argmax(probs: np.ndarray) -> np.ndarray:
    """(N, C) -> (N,) most probable class."""
    return _check_probs(probs, 2).argmax(axis=1)


def expected_distance(probs: np.ndarray, D: np.ndarray) -> np.ndarray:
    """(N, C) risk of predicting each class: R[n, k] = sum_j p[n, j] * D[j, k] (D[truth, pred])."""
    return _check_probs(probs, 2) @ np.asarray(D, dtype=np.float64)


def decode_bayes(probs: np.ndarray, D: np.ndarray) -> np.ndarray:
    """(N, C) -> (N,) the class of least expected distance, argmin_k sum_j D[j, k] p_j."""
    return expected_distance(probs, D).argmin(axis=1)


# ------------------------------------------------------------------------------------- calibration
def apply_temperature(probs: np.ndarray, temperature: float, eps: float = 1e-12) -> np.ndarray:
    """Re-sharpen/soften probabilities: softmax(log p / T) (log p equals logits up to a shift)."""
    logits = np.log(np.clip(_check_probs(probs, 2), eps, None)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true labels."""
    probs = _check_probs(probs, 2)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], eps, None)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T minimising the validation NLL of apply_temperature(probs, T) (bounded 1-D search)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one labelled row")
    # search log T so the bracket is symmetric around T = 1
    result = minimize_scalar(
        lambda log_t: nll(apply_temperature(probs, np.exp(log_t)), labels),
        bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded", options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


# --------------------------------------------------------------------------------------- diffusion
@dataclass(frozen=True)
class TaxonomyGraph:
    """Concepts plus ancestor taxa as one undirected tree.

    Nodes 0..C-1 are the concepts (canonical order), nodes C.. are taxa (rank, name) from the lineages.
    Edges: every taxon to its nearest set ancestor in the lineage; every concept to its anchor taxon,
    which is its own (rank, name) node when it is named at one of the seven ranks (so 'Sebastes' the
    concept hangs under genus Sebastes, beside 'Sebastes diploproa'), or the deepest set taxon of its
    lineage for the five non-standard concepts (Caridea hangs under its order). `member[t, c]` is 1
    when concept c lies under taxon t (used for ancestor scores).
    """

    adjacency: np.ndarray  # (V, V) 0/1 symmetric
    member: np.ndarray  # (V - C, C) 0/1
    taxa: tuple[tuple[str, str], ...]  # (rank, name) of nodes C..V-1
    num_concepts: int


def taxonomy_graph(taxonomy: Taxonomy) -> TaxonomyGraph:
    """Build the concept + ancestor-taxon tree of `taxonomy` (see TaxonomyGraph)."""
    taxa: dict[tuple[str, str], int] = {}
    edges: set[tuple[int, int]] = set()
    C = len(taxonomy)
    anchors: list[int] = []
    for lineage in taxonomy.lineages:
        child = None
        for rank, name in reversed(list(zip(RANKS, lineage))):  # deepest first
            if name is None:
                continue
            node = taxa.setdefault((rank, name), C + len(taxa))
            if child is not None:
                edges.add((child, node))
            child = node
    for c, (name, lineage) in enumerate(zip(taxonomy.names, taxonomy.lineages)):
        rank = taxonomy.rank_of(name)
        if rank != "other":
            anchor = taxa[(rank, name)]
        else:
            deepest = [(r, t) for r, t in zip(RANKS, lineage) if t is not None][-1]
            anchor = taxa[deepest]
        edges.add((c, anchor))
        anchors.append(anchor)
    V = C + len(taxa)
    adjacency = np.zeros((V, V))
    for a, b in edges:
        adjacency[a, b] = adjacency[b, a] = 1.0
    member = np.zeros((len(taxa), C))
    for c, lineage in enumerate(taxonomy.lineages):
        for rank, name in zip(RANKS, lineage):
            if name is not None:
                member[taxa[(rank, name)] - C, c] = 1.0
    return TaxonomyGraph(adjacency, member, tuple(taxa), C)


def diffusion_operator(graph: TaxonomyGraph, alpha: float = 0.3) -> np.ndarray:
    """K = (1 - a) (I - a W_norm)^-1 with W_norm = D^-1/2 A D^-1/2 (symmetric normalisation).

    The spectral radius of W_norm is at most 1, so for 0 <= a < 1 the inverse exists and K is the
    closed form of the propagation f <- a W_norm f + (1 - a) f0 (diffusion on manifolds / manifold
    ranking)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    A = graph.adjacency
    inv_sqrt = 1.0 / np.sqrt(np.maximum(A.sum(axis=1), 1e-12))
    W = A * inv_sqrt[:, None] * inv_sqrt[None, :]
    return (1.0 - alpha) * np.linalg.inv(np.eye(len(A)) - alpha * W)


def diffuse(probs: np.ndarray, graph: TaxonomyGraph, alpha: float = 0.3, operator: np.ndarray | None = None) -> np.ndarray:
    """Diffuse leaf + ancestor scores over the taxonomy graph; returns (N, C) concept scores (rows sum to 1).

    f0 is the concept probability on concept nodes and the probability mass of its subtree (sum of
    its concepts' probabilities) on each taxon node; f = K f0 is read back on the concept nodes, so a
    concept gains from confident relatives and the decoded label leans toward the confident branch."""
    probs = _check_probs(probs, 2)
    if probs.shape[1] != graph.num_concepts:
        raise ValueError(f"probs have {probs.shape[1]} classes, the graph {graph.num_concepts}")
    K = operator if operator is not None else diffusion_operator(graph, alpha)
    f0 = np.concatenate([probs, probs @ graph.member.T], axis=1)  # (N, V)
    f = f0 @ K.T
    scores = f[:, : graph.num_concepts]
    return scores / scores.sum(axis=1, keepdims=True)


def decode_diffusion(probs: np.ndarray, graph: TaxonomyGraph, alpha: float = 0.3) -> np.ndarray:
    """(N, C) -> (N,) argmax of the diffused concept scores."""
    return diffuse(probs, graph, alpha).argmax(axis=1)


# ------------------------------------------------------------------------------- test-time views
def mean_over_views(view_probs: np.ndarray) -> np.ndarray:
    """(T, H, N, C) per-view probabilities of one member -> (H, N, C) their mean over the T test-time views
    (the view itself when T = 1). Training's saved `probs` and `src.inference` both average views here."""
    view_probs = np.asarray(view_probs)
    if view_probs.ndim != 4:
        raise ValueError(f"view_probs must be (T, H, N, C), got shape {view_probs.shape}")
    return view_probs[0] if len(view_probs) == 1 else view_probs.mean(axis=0)


def taxon_probabilities(probs: np.ndarray, taxonomy: Taxonomy,
                        rank: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The most probable taxon at `rank` per ROI and its probability.

    A taxon's probability is the sum of the probabilities of the concepts under it (concepts with no
    taxon at that rank, e.g. a genus at rank species, count for none). probs (N, C) ->
    (taxon index (N,) into the returned taxa, probability (N,), taxa names sorted)."""
    probs = _check_probs(probs, 2)
    concept_taxon, taxa = taxonomy.rank_labels(rank)
    member = np.zeros((probs.shape[1], len(taxa)))
    has = concept_taxon >= 0
    member[np.flatnonzero(has), concept_taxon[has]] = 1.0
    mass = probs @ member  # (N, T)
    best = mass.argmax(axis=1)
    return best, mass[np.arange(len(mass)), best], taxa
