"""The NaN/inf loss check makes no host-device sync per step (defect 8): the first bad step is kept on the
device and read every few steps and at the end of the epoch, and the error still names that step."""
import math

import pytest
import torch
import torch.nn as nn

from src.runtime import Runtime
from src.train import TrainingDiverged, train_one_epoch


class Terms:
    """loss_fn.terms: cross-entropy, NaN (or inf) from step `bad` (1-based) on."""

    def __init__(self, bad: int | None, value: float = math.nan):
        self.bad, self.value, self.calls = bad, value, 0

    def terms(self, out, y):
        self.calls += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * self.value if self.bad is not None and self.calls >= self.bad else loss


def run_epoch(terms: Terms, steps: int = 10, **kwargs):
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    loader = [(torch.randn(2, 4), torch.randint(0, 3, (2,))) for _ in range(steps)]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    rt = Runtime(0, 1, torch.device("cpu"), False)
    return train_one_epoch(net, loader, terms, optimizer, scheduler, scaler, None, rt, None, "epoch", False,
                           **kwargs)


@pytest.mark.parametrize("bad, value", [(1, math.nan), (6, math.nan), (10, math.inf), (3, -math.inf)])
def test_the_first_bad_step_is_named(bad, value):
    with pytest.raises(TrainingDiverged, match=rf"at step {bad}$") as err:
        run_epoch(Terms(bad, value))
    assert err.value.step == bad and (math.isnan(err.value.value) if math.isnan(value) else err.value.value == value)


def test_no_host_sync_per_step(monkeypatch):
    calls = []
    real_item = torch.Tensor.item

    def counting_item(self):
        calls.append(1)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    loss, seen, _ = run_epoch(Terms(None), steps=40)
    assert seen == 80 and math.isfinite(loss)
    assert len(calls) <= 4, f"{len(calls)} host reads for 40 steps"
    calls.clear()
    with pytest.raises(TrainingDiverged, match="at step 7$"):
        run_epoch(Terms(7), steps=40)
    assert len(calls) <= 4


def test_the_mean_loss_is_unchanged():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    loader = [(torch.randn(2, 4), torch.randint(0, 3, (2,))) for _ in range(5)]
    expected = []
    for x, y in loader:  # the loss of each batch before its step, as train_one_epoch sees it
        expected.append(float(nn.functional.cross_entropy(net(x), y)))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    loss, _, _ = run_epoch(Terms(None), steps=5)
    assert loss == pytest.approx(sum(expected) / 5, rel=1e-5)
