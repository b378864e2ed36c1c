"""Classification losses over the 79 concepts: distance-weighted CE and the baselines it is compared with.

Every loss takes logits of shape (B, C) or (H, B, C) (H heads of one model; the loss is then the mean
over heads and batch) and integer targets (B,) in the canonical class order. All computations run in
float32 whatever the input dtype (bf16/fp16 autocast outputs are upcast first).

- `DistanceWeightedCE(weight)`: L = -sum_j W[i,j] * (log p_j if j == i else log(1 - p_j)) (DESIGN.md s.2)
- `CrossEntropy`: plain CE (optional label smoothing)
- `CEExpectedDistance(D, lam)`: CE + lam * sum_j p_j D[i,j]
- `SoftLabelCE(D, beta)`: CE against the soft target softmax(-beta * D[i])
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.taxonomy import Taxonomy, distance_matrix, dwce_weights_paper, dwce_weights_team

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
    """Distance-weighted cross-entropy with weight matrix W (C, C), row = true class (DESIGN.md s.2)."""

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


def build_loss(cfg, taxonomy: Taxonomy) -> nn.Module:
    """The loss named by a `LossConfig` (cfg.name in ce | dwce | ce_expdist | soft_labels)."""
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
    raise ValueError(f"unknown loss {cfg.name!r}; valid: ce, dwce, ce_expdist, soft_labels")
