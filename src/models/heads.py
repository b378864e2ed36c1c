"""H classifier heads Linear(F, K) - ReLU - Linear(K, C) on one feature vector, run as one batched op.

The team ran 100 heads as a Python loop (200 small kernel launches per step on a GPU). `MultiHead`
stores the H heads' weights stacked: the first layer of all heads is a single (B, F) x (F, H*K)
matmul (the input is shared), the second a single batched matmul over heads. `LoopHeads` is the same
function as a loop of nn.Linear layers: the reference for tests and the benchmark only.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class MultiHead(nn.Module):
    """H heads; forward (B, F) -> logits (H, B, C). hidden=0 makes each head a single Linear(F, C)."""

    def __init__(self, in_features: int, num_classes: int, num_heads: int = 1, hidden: int | None = None):
        super().__init__()
        self.in_features, self.num_classes, self.num_heads = in_features, num_classes, num_heads
        self.hidden = in_features if hidden is None else hidden
        first_out = self.hidden or num_classes
        self.w1 = nn.Parameter(torch.empty(in_features, num_heads * first_out))
        self.b1 = nn.Parameter(torch.empty(num_heads, first_out))
        if self.hidden:
            self.w2 = nn.Parameter(torch.empty(num_heads, self.hidden, num_classes))
            self.b2 = nn.Parameter(torch.empty(num_heads, num_classes))
        self.reset_parameters()

    def reset_parameters(self):
        """nn.Linear's default init, head by head: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.w1, -bound, bound)
        nn.init.uniform_(self.b1, -bound, bound)
        if self.hidden:
            bound = 1.0 / math.sqrt(self.hidden)
            nn.init.uniform_(self.w2, -bound, bound)
            nn.init.uniform_(self.b2, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h = (x @ self.w1).view(batch, self.num_heads, -1).transpose(0, 1) + self.b1[:, None, :]
        if not self.hidden:
            return h
        return torch.baddbmm(self.b2[:, None, :], torch.relu(h), self.w2)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, hidden={self.hidden}, classes={self.num_classes}, heads={self.num_heads}"


class LoopHeads(nn.Module):
    """Reference: the same H heads as a ModuleList run in a Python loop (tests and benchmarks only)."""

    def __init__(self, in_features: int, num_classes: int, num_heads: int = 1, hidden: int | None = None):
        super().__init__()
        hidden = in_features if hidden is None else hidden
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
            if hidden else nn.Linear(in_features, num_classes)
            for _ in range(num_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(x) for head in self.heads])

    @torch.no_grad()
    def copy_to(self, multi: MultiHead) -> MultiHead:
        """Write these heads' weights into `multi` (same sizes), so both compute the same function."""
        firsts = [h[0] if isinstance(h, nn.Sequential) else h for h in self.heads]
        multi.w1.copy_(torch.cat([lin.weight.t() for lin in firsts], dim=1))
        multi.b1.copy_(torch.stack([lin.bias for lin in firsts]))
        if multi.hidden:
            multi.w2.copy_(torch.stack([h[2].weight.t() for h in self.heads]))
            multi.b2.copy_(torch.stack([h[2].bias for h in self.heads]))
        return multi
