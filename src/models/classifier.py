"""The classifier: backbone(s) over V views of each ROI, view fusion, H heads, optional per-rank heads.

Input x: (B, V, 3, S, S) (view 0 is the ROI, the others its context windows) or (B, 3, S, S) for one
view; with views of different sizes (data.view_sizes), a list of V tensors (B, 3, S_v, S_v). Output:
{'logits': (H, B, C), 'aux': {rank: (B, n_taxa)}, 'features': (B, F)} and, with the
average-K set head, 'avgk': (B, C) logits of its per-concept sigmoids.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from src.models.heads import MultiHead


class AttentionFusion(nn.Module):
    """The ROI feature attends to all views' features (the 1st-place team's idea), residual on the ROI."""

    def __init__(self, features: int):
        super().__init__()
        heads = next(h for h in (8, 4, 2, 1) if features % h == 0)
        self.norm = nn.LayerNorm(features)
        self.attn = nn.MultiheadAttention(features, heads, batch_first=True)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        kv = self.norm(feats)
        out, _ = self.attn(kv[:, :1], kv, kv, need_weights=False)
        return feats[:, 0] + out[:, 0]


class Classifier(nn.Module):
    """Backbone(s) + fusion + MultiHead (+ aux heads per rank, + the average-K set head)."""

    def __init__(self, backbones: list[nn.Module], num_views: int, num_classes: int, num_heads: int = 1,
                 head_hidden: int | None = None, fusion: str = "concat",
                 aux_classes: dict[str, int] | None = None, channels_last: bool = False, avgk_head: bool = False,
                 avgk_detach: bool = True):
        super().__init__()
        if len(backbones) not in (1, num_views):
            raise ValueError("give one shared backbone or one per view")
        self.backbones = nn.ModuleList(backbones)
        self.num_views, self.fusion, self.channels_last = num_views, fusion, channels_last
        features = backbones[0].num_features
        if num_views == 1 or fusion == "mean":
            fused = features
        elif fusion == "concat":
            fused = features * num_views
        elif fusion == "attention":
            fused = features
            self.attention = AttentionFusion(features)
        else:
            raise ValueError(f"unknown fusion {fusion!r}; valid: concat, mean, attention")
        self.num_features = fused
        self.heads = MultiHead(fused, num_classes, num_heads, head_hidden)
        self.aux = nn.ModuleDict({rank: nn.Linear(fused, n) for rank, n in (aux_classes or {}).items()})
        self.avgk = nn.Linear(fused, num_classes) if avgk_head else None
        self.avgk_detach = avgk_detach  # the set head learns on the features without training them
        if self.avgk is not None:  # start at the prior log-odds of 1/C: the BCE over C sigmoids starts near CE's scale
            nn.init.constant_(self.avgk.bias, -math.log(num_classes - 1))

    def encode(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """(B, V, 3, S, S), or a list of V views (B, 3, S_v, S_v) -> per-view features (B, V, F)."""
        if isinstance(x, (list, tuple)):
            return self._encode_views(list(x))
        batch, views = x.shape[:2]
        if len(self.backbones) == 1:
            flat = x.flatten(0, 1)
            if self.channels_last:
                flat = flat.contiguous(memory_format=torch.channels_last)
            return self.backbones[0](flat).view(batch, views, -1)
        per_view = []
        for v, backbone in enumerate(self.backbones):
            xv = x[:, v].contiguous(memory_format=torch.channels_last) if self.channels_last else x[:, v]
            per_view.append(backbone(xv))
        return torch.stack(per_view, dim=1)

    def _encode_views(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Per-view features (B, V, F) of views of different sizes: a shared backbone runs once on each group
        of views of one size (stacked along the batch), per-view backbones each on their own view."""
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        if len(self.backbones) > 1:
            return torch.stack([backbone(v) for backbone, v in zip(self.backbones, views)], dim=1)
        groups: dict[tuple, list[int]] = {}
        for k, v in enumerate(views):
            groups.setdefault(tuple(v.shape[1:]), []).append(k)
        feats: list[torch.Tensor | None] = [None] * len(views)
        for members in groups.values():
            out = self.backbones[0](torch.cat([views[k] for k in members]))
            for k, f in zip(members, out.chunk(len(members))):
                feats[k] = f
        return torch.stack(feats, dim=1)

    def features(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Fused feature vector (B, num_features)."""
        if isinstance(x, (list, tuple)):
            shapes = [tuple(v.shape) for v in x]
            if len(x) != self.num_views or any(len(s) != 4 or s[0] != shapes[0][0] for s in shapes):
                raise ValueError(f"model expects {self.num_views} views (B, 3, S_v, S_v), got shapes {shapes}")
        else:
            if x.dim() == 4:
                x = x[:, None]
            if x.shape[1] != self.num_views:
                raise ValueError(f"model expects {self.num_views} views, got input of shape {tuple(x.shape)}")
        feats = self.encode(x)
        if self.num_views == 1:
            return feats[:, 0]
        if self.fusion == "concat":
            return feats.flatten(1)
        if self.fusion == "mean":
            return feats.mean(dim=1)
        return self.attention(feats)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> dict:
        f = self.features(x)
        out = {"logits": self.heads(f), "aux": {rank: head(f) for rank, head in self.aux.items()}, "features": f}
        if self.avgk is not None:
            out["avgk"] = self.avgk(f.detach() if self.avgk_detach else f)
        return out
