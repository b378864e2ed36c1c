"""HXE, set NLL, the average-K head's loss and the FIERCE term against direct evaluations of their formulas."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.config import LossConfig
from src.losses import (
    CrossEntropy,
    DistanceWeightedCE,
    FeatureEntropy,
    HierarchicalCE,
    SetTargetLoss,
    avgk_loss,
    build_loss,
    build_training_loss,
    feature_entropy,
    set_nll,
)
from src.taxonomy import RANKS, distance_matrix, dwce_weights_team, load_taxonomy, taxonomy_tree


def _logits(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()


def direct_hxe(logits, targets, taxonomy, alpha, weighting):
    """HXE written out from the lineages alone: chain root -> set taxa -> concept, p(taxon) = sum of p under it."""
    p = torch.softmax(logits, dim=-1)
    chains = [[None] + [(r, t) for r, t in zip(RANKS, lin) if t] + [("leaf", n)]
              for n, lin in zip(taxonomy.names, taxonomy.lineages)]

    def under(node, c):
        return node is None or (node[0] == "leaf" and node[1] == taxonomy.names[c]) or \
            (node[0] != "leaf" and taxonomy.lineages[c][RANKS.index(node[0])] == node[1])

    def height(node):
        return max(len(ch) - 1 - ch.index(node) for ch in chains if node in ch)

    total = 0.0
    for n, y in enumerate(targets.tolist()):
        mass = [sum(p[n, c] for c in range(len(chains)) if under(node, c)) for node in chains[y]]
        for l in range(1, len(chains[y])):
            h = l if weighting == "depth" else height(chains[y][l])
            total = total - math.exp(-alpha * h) * torch.log(mass[l] / mass[l - 1])
    return total / len(targets)


@pytest.mark.parametrize("alpha,weighting", [(0.0, "height"), (0.3, "height"), (0.6, "depth"), (1.5, "height")])
def test_hxe_matches_direct_formula_and_gradient(tiny_taxonomy, alpha, weighting):
    loss = HierarchicalCE(taxonomy_tree(tiny_taxonomy), alpha, weighting).double()
    logits, targets = _logits((12, 6)), torch.arange(12) % 6
    ours = loss(logits, targets)
    ref = direct_hxe(logits, targets, tiny_taxonomy, alpha, weighting)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, logits), torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, rtol=1e-10) and torch.allclose(g_ours, g_ref, rtol=1e-8, atol=1e-12)


def test_hxe_gradcheck_and_heads(tiny_taxonomy):
    loss = HierarchicalCE(taxonomy_tree(tiny_taxonomy), 0.4).double()
    logits, targets = _logits((4, 6), seed=1), torch.tensor([0, 1, 3, 4])
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))
    heads = _logits((3, 4, 6), seed=2)
    assert torch.allclose(loss(heads, targets), torch.stack([loss(heads[h], targets) for h in range(3)]).mean())


def test_hxe_alpha_zero_is_cross_entropy_on_the_real_taxonomy():
    loss = build_loss(LossConfig(name="hxe", hxe_alpha=0.0), load_taxonomy()).double()
    logits, targets = _logits((32, 79), seed=3, scale=5.0), torch.arange(32) * 2
    assert torch.allclose(loss(logits, targets), F.cross_entropy(logits, targets), rtol=1e-12)


def test_hxe_real_taxonomy_matches_direct_formula_and_is_stable():
    taxonomy = load_taxonomy()
    loss = HierarchicalCE(taxonomy_tree(taxonomy), 0.5, "height").double()
    logits, targets = _logits((3, 79), seed=4), torch.tensor([taxonomy.index(n) for n in ("Porifera", "Caridea",
                                                                                         "Sebastes diploproa")])
    assert torch.allclose(loss(logits, targets), direct_hxe(logits, targets, taxonomy, 0.5, "height"), rtol=1e-10)
    assert loss.path_masks.shape == (79, 6, 79)  # at most 6 distinct node sets on a path
    far = torch.full((1, 79), -1e4).index_fill_(1, torch.tensor([0]), 1e4).requires_grad_()  # confidently wrong
    value = HierarchicalCE(taxonomy_tree(taxonomy), 0.5)(far, targets[:1])
    value.backward()
    assert torch.isfinite(value) and value > 100 and torch.isfinite(far.grad).all()


def test_set_nll_formula_and_singletons():
    logits = _logits((2, 4, 5), seed=5)
    masks = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    p = torch.softmax(logits, dim=-1)
    direct = -torch.log((p * masks).sum(dim=-1)).mean()
    assert torch.allclose(set_nll(logits, masks), direct, rtol=1e-12)
    targets = torch.tensor([3, 0, 4, 2])
    assert torch.allclose(set_nll(logits[0], F.one_hot(targets, 5).bool()), F.cross_entropy(logits[0], targets))
    assert torch.autograd.gradcheck(lambda z: set_nll(z, masks), (logits,))


def test_set_target_loss_mixes_concepts_and_sets(tiny_taxonomy):
    tree = taxonomy_tree(tiny_taxonomy)
    D = distance_matrix(tiny_taxonomy)
    base = DistanceWeightedCE(dwce_weights_team(D)).double()
    loss = SetTargetLoss(base, tree.target_table).double()
    family = 6 + tree.taxon_node("F1")
    targets = torch.tensor([0, family, 5, 6 + tree.taxon_node("P2"), 3])
    logits = _logits((2, 5, 6), seed=6)
    is_set = targets >= 6
    expected = (3 * base(logits[:, ~is_set], targets[~is_set])
                + 2 * base.set_loss(logits[:, is_set], torch.as_tensor(tree.target_table)[targets[is_set]])) / 5
    assert torch.allclose(loss(logits, targets), expected, rtol=1e-12)
    p = torch.softmax(logits[0, 1], -1)
    assert torch.allclose(set_nll(logits[0, 1:2], torch.as_tensor(tree.target_table)[[family]]), -torch.log(p[:3].sum()))
    plain = torch.tensor([0, 1, 2, 3, 4])
    assert torch.equal(loss(logits, plain), base(logits, plain))
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))
    ce_loss = SetTargetLoss(CrossEntropy(), tree.target_table).double()  # CE-scale bases use the set NLL
    assert torch.allclose(ce_loss(logits[:, 1:2], targets[1:2]), -torch.log(torch.softmax(logits[:, 1], -1)[:, :3].sum(-1)).mean())


def test_dwce_set_loss_formula_singletons_and_scale(tiny_taxonomy):
    D = distance_matrix(tiny_taxonomy)
    W = torch.as_tensor(dwce_weights_team(D))
    base = DistanceWeightedCE(W).double()
    masks = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    logits = _logits((2, 3, 6), seed=7)
    p = torch.softmax(logits, dim=-1)
    direct = []  # S one merged class with the mean weight row of its concepts, written out row by row
    for h in range(2):
        for b in range(3):
            S = [c for c in range(6) if masks[b, c]]
            w = W[S].mean(dim=0)
            value = -w[S].sum() * torch.log(p[h, b, S].sum())
            value -= sum(w[j] * torch.log(1 - p[h, b, j]) for j in range(6) if j not in S)
            direct.append(value)
    assert torch.allclose(base.set_loss(logits, masks), torch.stack(direct).mean(), rtol=1e-10)
    targets = torch.tensor([2, 0, 5])  # singleton sets give DW-CE exactly
    assert torch.allclose(base.set_loss(logits, F.one_hot(targets, 6).bool()), base(logits, targets), rtol=1e-12)
    assert torch.autograd.gradcheck(lambda z: base.set_loss(z, masks), (logits,))
    # On the 79 concepts, a set row weighs like a concept row, not ~1 / W[i,i] (hundreds of) times more as
    # the set NLL does: the scale bug that made coarse pseudo-labels swamp DW-CE training.
    taxonomy = load_taxonomy()
    tree = taxonomy_tree(taxonomy)
    real = DistanceWeightedCE(dwce_weights_team(distance_matrix(taxonomy))).double()
    sets = torch.as_tensor(tree.target_table)[len(taxonomy) + np.arange(1, 9)]  # the first taxa below the root
    concepts = sets.float().argmax(dim=-1)  # a concept of each set
    z = _logits((8, len(taxonomy)), seed=8, scale=1.0)
    assert real.set_loss(z, sets) / real(z, concepts) < 5 and set_nll(z, sets) / real(z, concepts) > 50


def test_avgk_loss_matches_hand_selection():
    ce = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.4, 0.1]],
                                dtype=torch.float64))
    targets = torch.tensor([0, 1, 3])
    s = _logits((3, 4), seed=7)
    # k = 2, B = 3: the 3 largest non-true entries are 0.4 (row 2, class 2), 0.3 (row 0, class 1), 0.25 (row 2,
    # class 0 -- tied with class 1 there; either is a valid pick, so check the selection through the loss below)
    value = avgk_loss(s, ce, targets, k=2.0, alpha=0.3)
    target = torch.zeros(3, 4, dtype=torch.float64)
    target[0, 0] = target[1, 1] = target[2, 3] = 1
    pseudo = torch.zeros(3, 4, dtype=torch.bool)
    pseudo[2, 2] = pseudo[0, 1] = True
    tie = [(2, 0), (2, 1)]

    def direct(extra):
        mask = pseudo.clone()
        mask[extra] = True
        t = torch.where(mask, 1.0, target.double())
        w = torch.where(mask, torch.tensor(0.3, dtype=torch.float64), 1.0)
        sig = torch.sigmoid(s)
        return (-(w * (t * torch.log(sig) + (1 - t) * torch.log(1 - sig)))).sum(-1).mean()

    assert any(torch.allclose(value, direct(e), rtol=1e-10) for e in tie)
    g = torch.autograd.grad(value, s)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # k = 1: no pseudo-positives, plain one-vs-rest BCE; the CE heads' mean picks them, without gradient
    heads = _logits((2, 3, 4), seed=8)
    one = avgk_loss(s, heads, targets, k=1.0, alpha=0.3)
    assert torch.allclose(one, F.binary_cross_entropy_with_logits(s, target, reduction="sum") / 3)
    avgk_loss(s, heads, targets, k=2.0, alpha=0.3).backward()
    assert heads.grad is None


def test_feature_entropy_formula_and_extremes():
    features, anchors = _logits((5, 3), seed=9), _logits((4, 3), seed=10)
    f = features / features.norm(dim=1, keepdim=True)
    a = anchors / anchors.norm(dim=1, keepdim=True)
    q = torch.stack([torch.softmax(torch.stack([f[b] @ a[e] for e in range(4)]) / 0.2, 0) for b in range(5)]).mean(0)
    assert torch.allclose(feature_entropy(features, anchors, 0.2), -(q * q.log()).sum(), rtol=1e-12)
    assert torch.autograd.gradcheck(lambda x: feature_entropy(x, anchors, 0.2), (features,))
    module = FeatureEntropy(8, 6, tau=0.05, seed=3)
    assert torch.equal(module.anchors, FeatureEntropy(8, 6, tau=0.05, seed=3).anchors)
    assert not torch.equal(module.anchors, FeatureEntropy(8, 6, tau=0.05, seed=4).anchors)
    collapsed = module.anchors[:1].repeat(6, 1)  # every feature on one anchor: low entropy
    spread = module.anchors.clone()  # one feature per anchor: close to log E
    assert module(collapsed) < 0.5 * math.log(6) < module(spread) <= math.log(6) + 1e-6


def test_loss_options_in_config_help():
    from src.config import Config, describe_config
    text = describe_config(Config)
    for key in ("loss.hxe_alpha", "loss.hxe_weighting", "loss.fierce_lambda", "loss.fierce_tau", "loss.fierce_anchors",
                "model.avgk_head", "loss.avgk_k", "loss.avgk_alpha", "loss.avgk_weight"):
        assert key in text
    assert isinstance(build_loss(LossConfig(name="hxe", hxe_alpha=0.3, hxe_weighting="depth"), load_taxonomy()),
                      HierarchicalCE)
    # FIERCE is a term of TrainingLoss, not of the main loss
    assert isinstance(build_loss(LossConfig(fierce_lambda=0.1), load_taxonomy()), DistanceWeightedCE)


def test_training_loss_adds_each_configured_term():
    taxonomy = load_taxonomy()
    tree, C = taxonomy_tree(taxonomy), len(taxonomy)
    ranks = ("phylum", "order")
    n_taxa = {r: len(taxonomy.rank_labels(r)[1]) for r in ranks}
    g = torch.Generator().manual_seed(0)
    out = {"logits": torch.randn(2, 5, C, generator=g, dtype=torch.float64),
           "features": torch.randn(5, 8, generator=g, dtype=torch.float64),
           "avgk": torch.randn(5, C, generator=g, dtype=torch.float64),
           "aux": {r: torch.randn(5, n_taxa[r], generator=g, dtype=torch.float64) for r in ranks}}
    sets = {"Sebastes": tree.num_concepts + tree.taxon_node("Sebastes"),  # a genus: one phylum, one order
            "Cnidaria": tree.num_concepts + tree.taxon_node("Cnidaria")}  # a phylum: several orders
    targets = torch.tensor([0, 5, sets["Sebastes"], 7, sets["Cnidaria"]])
    cfg = LossConfig(name="ce", aux_weight=0.3, fierce_lambda=0.2, fierce_anchors=6, fierce_tau=0.5, avgk_k=2.0,
                     avgk_alpha=0.4, avgk_weight=0.7)
    loss = build_training_loss(cfg, taxonomy, ranks, num_features=8, avgk_head=True, set_targets=True, seed=3)
    table = torch.as_tensor(tree.target_table)
    expected = SetTargetLoss(CrossEntropy(), tree.target_table)(out["logits"], targets)
    assert torch.equal(loss(out["logits"], targets), expected)  # forward: the main loss alone (validation)
    for r in ranks:  # a set's taxon at a rank: the one all its concepts share, else none (left out)
        labels = taxonomy.rank_labels(r)[0]
        target = [int(np.unique(labels[table[t].numpy()])[0]) if len(np.unique(labels[table[t].numpy()])) == 1
                  and labels[table[t].numpy()][0] >= 0 else -1 for t in targets.tolist()]
        known = [i for i, t in enumerate(target) if t >= 0]
        expected = expected + 0.3 * F.cross_entropy(out["aux"][r][known], torch.tensor(target)[known])
    assert target == [-1 if labels[0] < 0 else int(labels[0]), int(labels[5]), int(labels[taxonomy.index("Sebastes")]),
                      int(labels[7]), -1]  # order of Cnidaria: none
    expected = expected - 0.2 * feature_entropy(out["features"], FeatureEntropy(8, 6, seed=3).anchors, 0.5)
    expected = expected + 0.7 * avgk_loss(out["avgk"], out["logits"], table[targets], 2.0, 0.4)
    assert torch.allclose(loss.terms(out, targets), expected, rtol=1e-7)  # the rank heads' CE runs in float32
    plain = build_training_loss(LossConfig(name="ce", aux_weight=0.3), taxonomy, ranks)  # defaults: CE + aux only
    concepts = torch.tensor([0, 5, 9, 7, 2])
    direct = F.cross_entropy(out["logits"].reshape(-1, C), concepts.repeat(2))
    for r in ranks:
        target = torch.as_tensor(taxonomy.rank_labels(r)[0])[concepts]
        direct = direct + 0.3 * F.cross_entropy(out["aux"][r][target >= 0], target[target >= 0])
    assert torch.allclose(plain.terms(out, concepts), direct, rtol=1e-7)
    with pytest.raises(ValueError, match="avgk_weight"):
        build_training_loss(LossConfig(avgk_weight=0.0), taxonomy, avgk_head=True)
    with pytest.raises(ValueError, match="feature width"):
        build_training_loss(LossConfig(fierce_lambda=0.1), taxonomy)
