"""Warm-up + cosine learning rate, stepped per batch."""
import math

import pytest
import torch

from src.schedule import build_scheduler, warmup_cosine_lr


def test_lr_at_chosen_steps():
    lr = lambda s: warmup_cosine_lr(s, total_steps=1000, warmup_steps=100, base_lr=1e-4, min_lr=1e-5)  # noqa: E731
    assert lr(0) == pytest.approx(1e-6)                  # first warm-up step: base / warmup
    assert lr(49) == pytest.approx(5e-5)
    assert lr(99) == pytest.approx(1e-4)                 # end of warm-up: the peak
    assert lr(100) == pytest.approx(1e-4)                # cosine starts at the peak
    assert lr(550) == pytest.approx((1e-4 + 1e-5) / 2)   # half-way through the decay
    assert lr(1000) == pytest.approx(1e-5)
    assert lr(5000) == pytest.approx(1e-5)               # floor after the end
    decay = [lr(s) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_no_warmup():
    assert warmup_cosine_lr(0, 10, 0, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_lr(5, 10, 0, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_scheduler_follows_function_and_resumes():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = build_scheduler(opt, total_steps=50, warmup_steps=10, min_lr=1e-5)
    seen = []
    for _ in range(30):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([warmup_cosine_lr(s, 50, 10, 1e-3, 1e-5) for s in range(30)])
    opt2 = torch.optim.AdamW(params, lr=1e-3)
    sched2 = build_scheduler(opt2, total_steps=50, warmup_steps=10, min_lr=1e-5)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert sched2.get_last_lr()[0] == pytest.approx(warmup_cosine_lr(30, 50, 10, 1e-3, 1e-5))
