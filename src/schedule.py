"""Learning-rate schedule stepped once per batch: linear warm-up, then cosine decay to a floor.

The team's scheduler was sized in batches but stepped once per epoch, so their lr never left the
warm-up (docs/method.md section 5); here it is stepped per batch by construction.
"""
from __future__ import annotations

import math

import torch


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """lr for optimiser step `step` (0-based).

    Warm-up: base_lr * (step + 1) / warmup_steps for step < warmup_steps (reaches base_lr at its end).
    Then cosine from base_lr (at step = warmup_steps) to min_lr (at step = total_steps); min_lr after.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `warmup_cosine_lr` for every param group (base lr = the group's lr)."""
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor(base_lr: float):
        return lambda step: warmup_cosine_lr(step, total_steps, warmup_steps, base_lr, min_lr) / base_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(lr) for lr in base_lrs])
