"""Classification losses over the 79 concepts: distance-weighted CE and the baselines it is compared with.

Every loss takes logits of shape (B, C) or (H, B, C) (H heads of one model; the loss is then the mean
over heads and batch) and integer targets (B,) in the canonical class order. All computations run in
float32 whatever the input dtype (bf16/fp16 autocast outputs are upcast first).

- `DistanceWeightedCE(weight)`: L = -sum_j W[i,j] * (log p_j if j == i else log(1 - p_j)) (docs/method.md, section 2)
- `CrossEntropy`: plain CE (optional label smoothing)
- `CEExpectedDistance(D, lam)`: CE + lam * sum_j p_j D[i,j]
- `SoftLabelCE(D, beta)`: CE against the soft target softmax(-beta * D[i])
- `HierarchicalCE(tree, alpha)`: HXE, -sum over the path root->y of lambda(v) log(p(v) / p(parent(v)))
- `SetTargetLoss(base, table)`: coarse targets (sets S of concepts) through the set NLL -log sum_{c in S} p_c,
  or the base loss's own set version (`DistanceWeightedCE.set_loss`); `base` for concepts
- `avgk_loss`: BCE of the average-K set head; `FeatureEntropy`: the FIERCE regulariser H(q)
- `TrainingLoss`: what the training loop minimises: one of the above on the heads' logits, set targets,
  auxiliary rank heads, FIERCE and the average-K head (`build_training_loss`)
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.taxonomy import Taxonomy, TaxonomyTree, distance_matrix, dwce_weights_paper, dwce_weights_team, taxonomy_tree

LOG_HALF = -math.log(2.0)


def log_one_minus_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(1 - softmax(logits)) along the last dim, finite and accurate even where p rounds to exactly 1.

    Only the largest logit of a row can have p > 1/2. For it, 1 - p is the sum of the other classes'
    probabilities, computed exactly as logsumexp(other logits) - logsumexp(all logits) (this replaces the
    usual log(-expm1(log p)) branch, which still gives -inf once p rounds to 1, e.g. at logits of 1e4).
    Every other entry has p <= 1/2, where log1p(-exp(log p)) is accurate; the top entry is masked to a
    safe value before it so that no inf/NaN reaches the gradient.
    """
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    top = logits.argmax(dim=-1, keepdim=True)
    is_top = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
    rest = torch.logsumexp(logits.masked_fill(is_top, float("-inf")), dim=-1, keepdim=True) - lse
    others = torch.log1p(-torch.exp((logits - lse).masked_fill(is_top, LOG_HALF)))
    return torch.where(is_top, rest, others)


def _flatten_heads(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, B, C) logits with (B,) targets -> (H*B, C), (H*B,); (B, C) passes through.

    Half precision (fp16/bf16) is upcast to float32; float64 stays (exact gradient checks)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if logits.dim() == 3:
        heads = logits.shape[0]
        return logits.reshape(-1, logits.shape[-1]), targets.repeat(heads)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C) or (H, B, C), got shape {tuple(logits.shape)}")
    return logits, targets


def _as_buffer(matrix) -> torch.Tensor:
    return torch.as_tensor(np.asarray(matrix), dtype=torch.float32)


class DistanceWeightedCE(nn.Module):
    """Distance-weighted cross-entropy with weight matrix W (C, C), row = true class (docs/method.md, section 2)."""

    def __init__(self, weight):
        super().__init__()
        weight = _as_buffer(weight)
        if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(f"weight must be a square (C, C) matrix, got shape {tuple(weight.shape)}")
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _flatten_heads(logits, targets)
        log1mp = log_one_minus_softmax(logits)
        w = self.weight[targets]
        t = targets[:, None]
        # sum_j W[i,j] log(1-p_j), with the j = i term swapped for W[i,i] log p_i (all terms finite).
        true_term = w.gather(1, t) * (F.log_softmax(logits, dim=-1).gather(1, t) - log1mp.gather(1, t))
        return -((w * log1mp).sum(dim=-1) + true_term[:, 0]).mean()

    def set_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """DW-CE of set targets (masks (B, C) bool: the concepts under a taxon), on DW-CE's own scale.

        The set S is one merged class whose weight row is the mean of its concepts' rows, w = mean_{c in S} W[c]:
        L = -(sum_{c in S} w_c) log p(S) - sum_{j not in S} w_j log(1 - p_j). A singleton set is DW-CE exactly.
        (A plain set NLL would weigh a set row about 1 / W[i,i], hundreds of times, more than a concept row.)"""
        logits = _upcast(logits)
        m = masks.to(self.weight.dtype)
        w = (m @ self.weight) / m.sum(dim=-1, keepdim=True)  # (B, C)
        log_mass = masked_log_mass(F.log_softmax(logits, dim=-1), masks)  # (..., B)
        outside = (w * log_one_minus_softmax(logits)).masked_fill(masks, 0.0).sum(dim=-1)
        return -((w * m).sum(dim=-1) * log_mass + outside).mean()


class CrossEntropy(nn.Module):
    """Plain cross-entropy (the baseline)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _flatten_heads(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)


class CEExpectedDistance(nn.Module):
    """CE + lam * expected distance sum_j p_j D[i,j] (ICTLab used lam = 0.1, the FAU paper 0.3)."""

    def __init__(self, distances, lam: float = 0.1):
        super().__init__()
        self.register_buffer("distances", _as_buffer(distances))
        self.lam = lam

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _flatten_heads(logits, targets)
        ce = F.cross_entropy(logits, targets)
        expected = (logits.softmax(dim=-1) * self.distances[targets]).sum(dim=-1).mean()
        return ce + self.lam * expected


class SoftLabelCE(nn.Module):
    """CE against soft targets q = softmax(-beta * D[i]) (Bertinetto et al. 2020 'soft labels')."""

    def __init__(self, distances, beta: float = 1.0):
        super().__init__()
        self.register_buffer("soft_targets", torch.softmax(-beta * _as_buffer(distances), dim=-1))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _flatten_heads(logits, targets)
        return -(self.soft_targets[targets] * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def masked_log_mass(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log sum_{c in mask} p_c from log-probabilities (..., C) and a bool mask broadcastable to them.

    A logsumexp over the kept entries: finite however small the mass (a sum of probabilities would
    underflow to log 0 for a confidently wrong model). Every mask row must keep at least one class."""
    return torch.logsumexp(log_probs.masked_fill(~mask, float("-inf")), dim=-1)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


HXE_WEIGHTINGS = ("height", "depth")


def hxe_path_terms(tree: TaxonomyTree, alpha: float, weighting: str = "height") -> tuple[np.ndarray, np.ndarray]:
    """HXE as a weighted sum of node log-masses: (masks (C, L, C) bool, coefs (C, L) float64) with
    HXE(y) = -sum_l coefs[y, l] * log p(masks[y, l]).

    HXE(y) = -sum over the nodes v of the path root->y (root excluded) of lambda(v) log(p(v) / p(parent(v))),
    lambda(v) = exp(-alpha * h(v)); h = `height` (edges down to the deepest leaf below v; leaves 0) or
    `depth` (edges from the root), the convention of Bertinetto et al.'s released code, which weights the
    edges near the root most. Telescoping gives the coefficient of log p(v): lambda(v) - lambda(child of v on
    the path) (lambda(leaf) for the leaf; log p(root) = 0). Consecutive path nodes over the same concepts
    have equal p (single-child chains such as species -> its concept leaf) and are merged, their
    coefficients added; sets of all concepts (p = 1) are dropped. Unused slots hold all-True masks with
    coefficient 0. alpha = 0 leaves only log p(leaf) with coefficient 1: plain CE.
    """
    if weighting not in HXE_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {HXE_WEIGHTINGS}, got {weighting!r}")
    h = (tree.height if weighting == "height" else tree.depth).astype(np.float64)
    lam = np.exp(-alpha * h)
    C = tree.num_concepts
    per_class = []
    for y in range(C):
        path = tree.path(y)
        terms: list[list] = []  # [mask, coefficient], root excluded
        for i, v in enumerate(path[1:], start=1):
            coef = lam[v] - (lam[path[i + 1]] if i + 1 < len(path) else 0.0)
            if terms and (tree.member[v] == terms[-1][0]).all():
                terms[-1][1] += coef
            else:
                terms.append([tree.member[v], coef])
        per_class.append([t for t in terms if not t[0].all()])
    L = max(len(t) for t in per_class)
    masks, coefs = np.ones((C, L, C), dtype=bool), np.zeros((C, L))
    for y, terms in enumerate(per_class):
        for l, (mask, coef) in enumerate(terms):
            masks[y, l], coefs[y, l] = mask, coef
    return masks, coefs


class HierarchicalCE(nn.Module):
    """Hierarchical cross-entropy (HXE, Bertinetto et al. 2020) over a `TaxonomyTree`; see `hxe_path_terms`.

    Each target's path nodes are gathered as (N, L, C) masks (L = 6 for the 79 concepts), so memory grows
    with L * C per row, not with the number of tree nodes."""

    def __init__(self, tree: TaxonomyTree, alpha: float = 0.1, weighting: str = "height"):
        super().__init__()
        masks, coefs = hxe_path_terms(tree, alpha, weighting)
        self.register_buffer("path_masks", torch.as_tensor(masks))
        self.register_buffer("path_coefs", torch.as_tensor(coefs))  # float64: exact weights, cast per call

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _flatten_heads(logits, targets)
        log_probs = F.log_softmax(logits, dim=-1)
        node_log_mass = masked_log_mass(log_probs[:, None, :], self.path_masks[targets])  # (N, L)
        return -(self.path_coefs[targets].to(log_probs.dtype) * node_log_mass).sum(dim=-1).mean()


def set_nll(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Set NLL -log sum_{c in S} p_c, mean over rows (and heads): logits (B, C) or (H, B, C), masks (B, C) bool.

    A singleton set is plain CE; the set of the concepts under a taxon trains on "somewhere under T"."""
    return -masked_log_mass(F.log_softmax(_upcast(logits), dim=-1), masks).mean()


class SetTargetLoss(nn.Module):
    """A loss for batches mixing concept targets and coarse (set) targets, encoded as one integer per row.

    Targets < C are concepts and go through `base` (the configured loss); a target C + v means "the
    concepts under node v of the taxonomy tree" (`TaxonomyTree.target_table` row C + v) and goes through
    `base.set_loss` where the base loss has one (DW-CE: its scale is far below CE's), else `set_nll` (the
    CE-scale losses). The result is the row-weighted mean of both parts, so an all-concept batch gives `base`."""

    def __init__(self, base: nn.Module, target_table):
        super().__init__()
        self.base = base
        self.register_buffer("target_table", torch.as_tensor(np.asarray(target_table, dtype=bool)))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        is_set = targets >= logits.shape[-1]
        n_set, n = int(is_set.sum()), len(targets)
        if n_set == 0:
            return self.base(logits, targets)
        set_loss = getattr(self.base, "set_loss", set_nll)
        coarse = set_loss(logits[..., is_set, :], self.target_table[targets[is_set]])
        if n_set == n:
            return coarse
        plain = ~is_set
        return ((n - n_set) * self.base(logits[..., plain, :], targets[plain]) + n_set * coarse) / n


def avgk_loss(set_logits: torch.Tensor, ce_logits: torch.Tensor, targets: torch.Tensor, k: float,
              alpha: float) -> torch.Tensor:
    """BCE of the average-K set head (Garcin et al.), summed over classes, mean over the batch.

    set_logits (B, C): the sigmoid head; ce_logits (B, C) or (H, B, C): the CE head(s), whose head-mean
    softmax picks the pseudo-positives without gradient; targets (B,) concept indices or (B, C) bool
    (a set target: all its concepts are positives). Positives get target 1 and weight 1; the batch's
    round((k - 1) * B) largest non-positive softmax entries are pseudo-positives with target 1 and
    weight alpha; every other entry is a negative (target 0, weight 1)."""
    set_logits = _upcast(set_logits)
    B, C = set_logits.shape
    positive = targets if targets.dtype == torch.bool else F.one_hot(targets, C).bool()
    with torch.no_grad():
        probs = _upcast(ce_logits.detach()).softmax(dim=-1)
        probs = probs.mean(dim=0) if probs.dim() == 3 else probs
        n_pseudo = min(int(round((k - 1) * B)), int((~positive).sum()))
        top = probs.masked_fill(positive, -1.0).flatten().topk(n_pseudo).indices
        pseudo = torch.zeros(B * C, dtype=torch.bool, device=set_logits.device).index_fill_(0, top, True).view(B, C)
    target = (positive | pseudo).to(set_logits.dtype)
    weight = torch.where(pseudo, torch.as_tensor(alpha, dtype=set_logits.dtype, device=set_logits.device),
                         torch.ones((), dtype=set_logits.dtype, device=set_logits.device))
    bce = F.binary_cross_entropy_with_logits(set_logits, target, weight=weight, reduction="none")
    return bce.sum(dim=-1).mean()


def feature_entropy(features: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """H(q), q = batch mean of softmax_e(cos(feature_b, anchor_e) / tau) over E anchors (the FIERCE term).

    Large when the batch's features spread over the anchors' directions, log E at most."""
    f = F.normalize(_upcast(features), dim=-1)
    a = F.normalize(anchors.to(f.dtype), dim=-1)
    q = torch.softmax(f @ a.T / tau, dim=-1).mean(dim=0)
    return -(q * torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))).sum()


class FeatureEntropy(nn.Module):
    """FIERCE regulariser: `feature_entropy` against E fixed random unit anchors drawn from a seeded
    generator (the same anchors on every rank and after a resume). Training subtracts lambda * H(q)."""

    def __init__(self, num_features: int, num_anchors: int, tau: float = 0.1, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("anchors", F.normalize(torch.randn(num_anchors, num_features, generator=generator), dim=-1))
        self.tau = tau

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return feature_entropy(features, self.anchors, self.tau)


def build_loss(cfg, taxonomy: Taxonomy) -> nn.Module:
    """The loss named by a `LossConfig` (cfg.name in ce | dwce | ce_expdist | soft_labels | hxe)."""
    D = distance_matrix(taxonomy)
    if cfg.name == "ce":
        return CrossEntropy(cfg.label_smoothing)
    if cfg.name == "dwce":
        weights = {"team": dwce_weights_team, "paper": dwce_weights_paper}[cfg.dwce_weights](D)
        return DistanceWeightedCE(weights)
    if cfg.name == "ce_expdist":
        return CEExpectedDistance(D, cfg.expdist_lambda)
    if cfg.name == "soft_labels":
        return SoftLabelCE(D, cfg.soft_beta)
    if cfg.name == "hxe":
        return HierarchicalCE(taxonomy_tree(taxonomy), cfg.hxe_alpha, cfg.hxe_weighting)
    raise ValueError(f"unknown loss {cfg.name!r}; valid: ce, dwce, ce_expdist, soft_labels, hxe")


class TrainingLoss(nn.Module):
    """The training objective over the model's outputs {'logits', 'aux', 'features', 'avgk'}.

    forward(logits, targets) is the main loss alone (the configured loss; the set NLL for targets >= C when
    `target_table` is given), the validation loss. `terms(out, targets)` adds what needs the model's other
    outputs: aux_weight * CE of each rank head on the target's taxon at that rank (rows without one, -1,
    are left out), - fierce_lambda * H(q) of the features (FIERCE), and avgk_weight * the average-K BCE.
    Targets index `target_table` (C + V rows: concepts, then the taxa of the tree) for every term."""

    def __init__(self, base: nn.Module, aux_targets: dict[str, torch.Tensor] | None = None, aux_weight: float = 0.0,
                 target_table=None, fierce: FeatureEntropy | None = None, fierce_lambda: float = 0.0,
                 avgk: dict | None = None):
        super().__init__()
        self.base = base if target_table is None else SetTargetLoss(base, target_table)
        self.aux_weight, self.aux_ranks = aux_weight, tuple(aux_targets or {})
        for rank, table in (aux_targets or {}).items():
            self.register_buffer(f"aux_{rank}", torch.as_tensor(table, dtype=torch.int64))
        self.fierce, self.fierce_lambda = fierce, fierce_lambda
        self.avgk = avgk  # {'table': (C + V, C) bool, 'k', 'alpha', 'weight'} or None
        if avgk is not None:
            self.register_buffer("avgk_table", torch.as_tensor(np.asarray(avgk["table"], dtype=bool)))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.base(logits, targets)

    def terms(self, out: dict, targets: torch.Tensor) -> torch.Tensor:
        """The main loss plus every term on the other outputs (see the class docstring)."""
        loss = self(out["logits"], targets)
        for rank in self.aux_ranks:
            target = getattr(self, f"aux_{rank}")[targets]
            known = target >= 0  # concepts above this rank, and sets spanning several taxa, have none there
            ce = F.cross_entropy(out["aux"][rank].float(), target.clamp(min=0), reduction="none")
            loss = loss + self.aux_weight * (ce * known).sum() / known.sum().clamp(min=1)
        if self.fierce is not None:
            loss = loss - self.fierce_lambda * self.fierce(out["features"])
        if self.avgk is not None:
            loss = loss + self.avgk["weight"] * avgk_loss(out["avgk"], out["logits"], self.avgk_table[targets],
                                                          self.avgk["k"], self.avgk["alpha"])
        return loss


def build_training_loss(cfg, taxonomy: Taxonomy, aux_ranks=(), num_features: int | None = None,
                        avgk_head: bool = False, set_targets: bool = False, batch_size: int = 64, seed: int = 0,
                        base: nn.Module | None = None) -> TrainingLoss:
    """The `TrainingLoss` of a training Config's loss section (`cfg` is its LossConfig).

    aux_ranks: the model's rank heads; num_features: its feature width (FIERCE); avgk_head: the model has the
    average-K set head; set_targets: the data hold coarse (set) targets; batch_size: FIERCE's default anchor
    count; seed: FIERCE's anchors; base: the main loss (default `build_loss(cfg, taxonomy)`)."""
    tree = taxonomy_tree(taxonomy)
    base = build_loss(cfg, taxonomy) if base is None else base
    # The extended (C + V) tables give the same values as the concepts' own for targets < C.
    aux = {r: tree.target_rank_labels(taxonomy.rank_labels(r)[0]) for r in aux_ranks}
    fierce = None
    if cfg.fierce_lambda > 0:
        if num_features is None:
            raise ValueError("loss.fierce_lambda > 0 needs the model's feature width")
        fierce = FeatureEntropy(num_features, cfg.fierce_anchors or batch_size, cfg.fierce_tau, seed=seed)
    avgk = None
    if avgk_head:
        if cfg.avgk_weight <= 0:  # an untrained head would be saved and used; its unused parameters break DDP
            raise ValueError("model.avgk_head needs loss.avgk_weight > 0")
        avgk = {"table": tree.target_table, "k": cfg.avgk_k, "alpha": cfg.avgk_alpha, "weight": cfg.avgk_weight}
    return TrainingLoss(base, aux, cfg.aux_weight, tree.target_table if set_targets else None, fierce,
                        cfg.fierce_lambda, avgk)
