"""Losses against direct evaluations of their formulas (values and gradients), and stability."""
import numpy as np
import pytest
import torch

from src.config import LossConfig
from src.losses import (
    CEExpectedDistance,
    CrossEntropy,
    DistanceWeightedCE,
    SoftLabelCE,
    build_loss,
    log_one_minus_softmax,
)
from src.taxonomy import distance_matrix, dwce_weights_paper, dwce_weights_team, load_taxonomy

C = 6


@pytest.fixture(scope="module")
def D():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 12, size=(C, C))
    d = np.triu(a, 1) + np.triu(a, 1).T
    return d


def _inputs(b=5, scale=3.0, seed=0, heads=None):
    g = torch.Generator().manual_seed(seed)
    shape = (b, C) if heads is None else (heads, b, C)
    logits = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()
    targets = torch.randint(0, C, (b,), generator=g)
    return logits, targets


def direct_dwce(logits, targets, W):
    """The DW-CE formula of docs/method.md, literally, in float64."""
    p = torch.softmax(logits, dim=-1)
    total = 0.0
    for n in range(len(targets)):
        i = int(targets[n])
        for j in range(C):
            total = total - W[i, j] * (torch.log(p[n, j]) if j == i else torch.log(1 - p[n, j]))
    return total / len(targets)


def _check(loss_fn, direct, logits, targets, rtol=1e-10):
    ours = loss_fn(logits, targets)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = direct(logits, targets)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, rtol=rtol, atol=1e-12)
    assert torch.allclose(g_ours, g_ref, rtol=100 * rtol, atol=1e-12)


@pytest.mark.parametrize("variant", [dwce_weights_team, dwce_weights_paper])
def test_dwce_matches_formula_and_gradient(D, variant):
    W = torch.as_tensor(variant(D)).float().double()  # the module stores W in float32
    logits, targets = _inputs()
    _check(DistanceWeightedCE(W).double(), lambda z, t: direct_dwce(z, t, W), logits, targets)


def test_dwce_gradcheck(D):
    loss = DistanceWeightedCE(dwce_weights_team(D)).double()
    logits, targets = _inputs(b=3)
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))


def test_dwce_multi_head_is_mean_over_heads(D):
    loss = DistanceWeightedCE(dwce_weights_team(D)).double()
    logits, targets = _inputs(heads=4)
    per_head = torch.stack([loss(logits[h], targets) for h in range(4)])
    assert torch.allclose(loss(logits, targets), per_head.mean())


def test_dwce_uniform_prediction_scale_is_small():
    D = distance_matrix(load_taxonomy())
    loss = DistanceWeightedCE(dwce_weights_team(D))
    value = loss(torch.zeros(8, 79), torch.arange(8))
    # log(1 - 1/79) over off-diagonal weights summing to ~1: about 0.0128, plus a tiny diagonal term.
    assert 0.01 < value.item() < 0.03


def test_log_one_minus_softmax_matches_direct_formula():
    logits, _ = _inputs(b=20, scale=4.0)
    expected = torch.log(1 - torch.softmax(logits, -1))
    assert torch.allclose(log_one_minus_softmax(logits), expected, rtol=1e-12)
    tied = torch.tensor([[2.0, 2.0, -1.0]], dtype=torch.float64)  # two tops: each has p < 1/2
    assert torch.allclose(log_one_minus_softmax(tied), torch.log(1 - torch.softmax(tied, -1)), rtol=1e-12)


def test_log_one_minus_softmax_exact_when_p_rounds_to_one():
    logits = torch.tensor([[40.0, 0.0, -3.0, 1.0]])
    ours = log_one_minus_softmax(logits)[0, 0].item()  # float32, where p[0] == 1.0 exactly
    assert torch.softmax(logits, -1)[0, 0].item() == 1.0
    exact = np.log(np.exp([0.0, -3.0, 1.0]).sum()) - 40.0  # log(sum of the other probabilities)
    assert ours == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_losses_finite_for_extreme_logits(D, dtype):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randint(0, 2, (16, C), generator=g) * 2e4 - 1e4).to(dtype).requires_grad_()
    targets = torch.randint(0, C, (16,), generator=g)
    for loss_fn in (DistanceWeightedCE(dwce_weights_team(D)), CrossEntropy(), CEExpectedDistance(D, 0.1),
                    SoftLabelCE(D, 1.0)):
        value = loss_fn(logits, targets)
        (grad,) = torch.autograd.grad(value, logits)
        assert value.dtype == torch.float32
        assert torch.isfinite(value), type(loss_fn).__name__
        assert torch.isfinite(grad.float()).all(), type(loss_fn).__name__


def test_dwce_wrong_confident_prediction_costs_more_when_far(D):
    W = dwce_weights_team(D)
    loss = DistanceWeightedCE(W)
    far, near = int(np.argmax(D[0])), int(np.argmin(D[0] + 100 * np.eye(C)[0]))
    logit_far = torch.zeros(1, C)
    logit_far[0, far] = 8.0
    logit_near = torch.zeros(1, C)
    logit_near[0, near] = 8.0
    assert loss(logit_far, torch.tensor([0])) > loss(logit_near, torch.tensor([0]))


def test_ce_expected_distance_formula(D):
    logits, targets = _inputs()
    Dt = torch.as_tensor(D, dtype=torch.float64)

    def direct(z, t):
        p = torch.softmax(z, -1)
        ce = -torch.log(p[torch.arange(len(t)), t]).mean()
        return ce + 0.3 * (p * Dt[t]).sum(-1).mean()

    _check(CEExpectedDistance(D, 0.3).double(), direct, logits, targets)


def test_soft_labels_formula(D):
    logits, targets = _inputs()
    Dt = torch.as_tensor(D, dtype=torch.float64)

    def direct(z, t):
        q = torch.exp(-0.5 * Dt[t]) / torch.exp(-0.5 * Dt[t]).sum(-1, keepdim=True)
        return -(q * torch.log(torch.softmax(z, -1))).sum(-1).mean()

    _check(SoftLabelCE(D, 0.5).double(), direct, logits, targets, rtol=1e-6)  # q is built in float32


def test_plain_ce_formula():
    logits, targets = _inputs()

    def direct(z, t):
        return -torch.log(torch.softmax(z, -1)[torch.arange(len(t)), t]).mean()

    _check(CrossEntropy(), direct, logits, targets)


def test_build_loss_by_name():
    tax = load_taxonomy()
    D = distance_matrix(tax)
    team = build_loss(LossConfig(name="dwce"), tax)
    paper = build_loss(LossConfig(name="dwce", dwce_weights="paper"), tax)
    assert isinstance(team, DistanceWeightedCE)
    assert np.allclose(team.weight.numpy(), dwce_weights_team(D))
    assert np.allclose(paper.weight.numpy(), dwce_weights_paper(D))
    assert isinstance(build_loss(LossConfig(name="ce"), tax), CrossEntropy)
    assert build_loss(LossConfig(name="ce_expdist", expdist_lambda=0.3), tax).lam == 0.3
    assert isinstance(build_loss(LossConfig(name="soft_labels"), tax), SoftLabelCE)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="square"):
        DistanceWeightedCE(np.ones((3, 4)))
    with pytest.raises(ValueError, match="logits"):
        CrossEntropy()(torch.zeros(3), torch.zeros(3, dtype=torch.long))
