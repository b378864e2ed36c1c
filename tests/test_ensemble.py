"""Ensemble math: GMU (both sigma conventions), voting with U tie-breaks, decoders, calibration, diffusion."""
import math

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from src.decoding import DECODERS, FRAME_DECODERS, EnsemblePredictions, FramePrior, decode_ensemble, fit_frame_prior
from src.ensemble import (
    apply_temperature,
    decode_argmax,
    decode_bayes,
    decode_diffusion,
    diffuse,
    diffusion_operator,
    expected_distance,
    fit_temperature,
    gmu,
    mean_over_views,
    member_labels_and_u,
    nll,
    taxonomy_graph,
    vote,
)
from src.frames import cooccurrence_prior, frame_mean_field
from src.taxonomy import distance_matrix, load_taxonomy

# three models, one ROI, three classes; mu = [.5, .3, .2]; unbiased std per class by hand:
# class 0: (.6,.6,.3) -> sqrt(.06/2); class 1: (.3,.35,.25) -> sqrt(.005/2); class 2: (.1,.05,.45) -> sqrt(.095/2)
P = np.array([[[0.6, 0.3, 0.1]], [[0.6, 0.35, 0.05]], [[0.3, 0.25, 0.45]]])
S0, S1, S2 = math.sqrt(0.03), math.sqrt(0.0025), math.sqrt(0.0475)


def test_gmu_top2_sigma_matches_hand_computation():
    mu, U = gmu(P, sigma="top2_sigma")
    np.testing.assert_allclose(mu, [[0.5, 0.3, 0.2]])
    # the two largest sigmas are classes 2 and 0 (class 2 is not a top-mu class)
    expected = 0.5 * (1 - math.exp(-(0.5 - 0.3) / (S2 + S0)))
    np.testing.assert_allclose(U, [expected], rtol=1e-9)
    assert abs(expected - 0.200148) < 1e-5


def test_gmu_sigma_at_top2_mu_matches_hand_computation():
    _, U = gmu(P, sigma="sigma_at_top2_mu")
    expected = 0.5 * (1 - math.exp(-(0.5 - 0.3) / (S0 + S1)))
    np.testing.assert_allclose(U, [expected], rtol=1e-9)
    assert abs(expected - 0.295903) < 1e-5


def test_gmu_single_model_is_mu_max_and_identical_models_give_mu_max():
    p = np.array([[[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]]])
    mu, U = gmu(p)
    np.testing.assert_allclose(U, [0.7, 0.5])
    _, U_same = gmu(np.repeat(p, 4, axis=0))  # zero spread, clear winner -> certain
    np.testing.assert_allclose(U_same, [0.7, 0.5])
    _, U_tied = gmu(np.array([[[0.4, 0.4, 0.2]], [[0.4, 0.4, 0.2]]]))  # no margin -> U = 0
    np.testing.assert_allclose(U_tied, [0.0], atol=1e-12)


def test_gmu_rejects_unknown_convention_and_bad_shape():
    with pytest.raises(ValueError, match="sigma must be one of"):
        gmu(P, sigma="max")
    with pytest.raises(ValueError, match="3 dimensions"):
        gmu(P[0])


def test_member_labels_use_each_models_own_head_mean():
    # model 0: heads disagree but their mean favours class 1; model 1: class 0
    m0 = np.array([[[0.6, 0.4]], [[0.1, 0.9]]])
    m1 = np.array([[[0.8, 0.2]]])
    labels, U = member_labels_and_u([m0, m1])
    assert labels.tolist() == [[1], [0]]
    assert U.shape == (2, 1) and U[1, 0] == pytest.approx(0.8)


def test_vote_majority_and_vote_counts():
    labels = np.array([[2, 0, 1], [2, 1, 1], [0, 1, 1]])
    scores = np.full(labels.shape, 0.5)
    label, votes = vote(labels, scores, num_classes=3)
    assert label.tolist() == [2, 1, 1]
    assert votes.tolist() == [2, 2, 3]


def test_vote_ties_are_broken_by_u_not_by_order_or_index():
    # two votes each for classes 3 and 1; the most certain voter of class 3 wins although class 1 has
    # the lower index and the first model voted for it
    labels = np.array([[1], [3], [1], [3]])
    scores = np.array([[0.6], [0.9], [0.7], [0.1]])
    label, votes = vote(labels, scores, num_classes=5)
    assert label.tolist() == [3] and votes.tolist() == [2]
    # flip the certainty: class 1 wins
    label, _ = vote(labels, np.array([[0.6], [0.5], [0.95], [0.1]]), num_classes=5)
    assert label.tolist() == [1]
    # a class with fewer votes never wins however certain
    label, votes = vote(np.array([[0], [0], [2]]), np.array([[0.1], [0.1], [0.99]]), num_classes=3)
    assert label.tolist() == [0] and votes.tolist() == [2]


def test_vote_full_tie_of_u_falls_back_to_lowest_index():
    label, votes = vote(np.array([[4], [2]]), np.array([[0.5], [0.5]]), num_classes=5)
    assert label.tolist() == [2] and votes.tolist() == [1]


def test_vote_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(M, N\)"):
        vote(np.zeros((2, 3), int), np.zeros((3, 2)))


def test_bayes_matches_brute_force_with_asymmetric_costs():
    rng = np.random.default_rng(0)
    D = rng.integers(0, 13, size=(6, 6)).astype(float)
    np.fill_diagonal(D, 0)
    probs = rng.dirichlet(np.ones(6) * 0.5, size=50)
    brute = [min(range(6), key=lambda k: sum(D[j, k] * p[j] for j in range(6))) for p in probs]
    assert decode_bayes(probs, D).tolist() == brute
    np.testing.assert_allclose(expected_distance(probs, D)[0], [sum(D[j, k] * probs[0, j] for j in range(6)) for k in range(6)])


def test_bayes_on_real_taxonomy_prefers_the_common_ancestor():
    tax = load_taxonomy()
    D = distance_matrix(tax)
    # split mass between a genus concept and its species: both close (distance 1), argmax and Bayes agree on
    # a member of the pair; split between two far-apart concepts plus their relative picks the middle ground
    probs = np.zeros((1, len(tax)))
    a, b = tax.index("Sebastes"), tax.index("Sebastes diploproa")
    probs[0, [a, b]] = [0.45, 0.55]
    assert decode_bayes(probs, D)[0] in (a, b)
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(tax)) * 0.2, size=200)
    risk = expected_distance(probs, D)
    chosen = decode_bayes(probs, D)
    assert np.all(risk[np.arange(200), chosen] <= risk[np.arange(200), decode_argmax(probs)] + 1e-12)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 10)) * 1.5
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(10, p=p) for p in true_p])
    over = apply_temperature(true_p, 1 / 3)  # three times sharper than the truth
    T = fit_temperature(over, labels)
    assert 2.5 < T < 3.5
    assert nll(apply_temperature(over, T), labels) < nll(over, labels)
    np.testing.assert_array_equal(decode_argmax(apply_temperature(over, T)), decode_argmax(over))


def test_taxonomy_graph_is_one_tree_with_concepts_under_their_own_taxon():
    tax = load_taxonomy()
    g = taxonomy_graph(tax)
    V = g.adjacency.shape[0]
    assert g.adjacency.sum() / 2 == V - 1 and connected_components(g.adjacency)[0] == 1
    node = {taxon: g.num_concepts + i for i, taxon in enumerate(g.taxa)}
    genus, species = node[("genus", "Sebastes")], node[("species", "Sebastes diploproa")]
    assert g.adjacency[tax.index("Sebastes"), genus] == 1  # the concept is a pendant on its own taxon
    assert g.adjacency[tax.index("Sebastes diploproa"), species] == 1
    assert g.adjacency[species, genus] == 1
    # a non-standard concept hangs under the deepest set taxon of its lineage
    caridea = tax.index("Caridea")
    assert g.adjacency[caridea].sum() == 1
    assert g.member.sum(axis=0).min() >= 1  # every concept lies under at least its kingdom


def test_diffusion_properties():
    tax = load_taxonomy()
    g = taxonomy_graph(tax)
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(len(tax)) * 0.3, size=20)
    np.testing.assert_allclose(diffuse(probs, g, alpha=0.0), probs, atol=1e-12)  # a = 0 is the identity
    K = diffusion_operator(g, 0.3)
    assert np.allclose(K, K.T) and K.min() >= 0
    scores = diffuse(probs, g, alpha=0.3)
    assert scores.min() >= 0 and np.allclose(scores.sum(1), 1)
    # a confident species lends more score to its genus-mate than to an unrelated concept of equal probability
    p = np.full((1, len(tax)), 0.2 / (len(tax) - 1))
    p[0, tax.index("Sebastes diploproa")] = 0.8
    s = diffuse(p / p.sum(), g)
    assert s[0, tax.index("Sebastes")] > s[0, tax.index("Porifera")]
    assert decode_diffusion(p, g)[0] == tax.index("Sebastes diploproa")
    with pytest.raises(ValueError, match="alpha"):
        diffusion_operator(g, 1.0)


def test_decode_ensemble_knows_every_decoder_and_rejects_others():
    tax = load_taxonomy()
    rng = np.random.default_rng(0)
    members = [rng.dirichlet(np.ones(len(tax)), size=(2, 6)) for _ in range(3)]
    preds = EnsemblePredictions(np.arange(6), members, None)
    decoded = decode_ensemble(preds, DECODERS, tax, "top2_sigma", 0.3, temperature=None)
    needs_fitting = {"bayes_cal", *FRAME_DECODERS}  # without a temperature / frame prior they are skipped
    assert set(decoded.labels) == set(DECODERS) - needs_fitting and set(decoded.skipped) == needs_fitting
    graph = taxonomy_graph(tax)
    assert (decoded.labels["diffusion"] == diffuse(preds.mean, graph, 0.3).argmax(axis=1)).all()
    assert (decode_ensemble(preds, ["bayes_cal"], tax, "top2_sigma", 0.3, 1.0).labels["bayes_cal"]
            == decoded.labels["bayes"]).all()  # T = 1 changes nothing
    with pytest.raises(ValueError, match="unknown decoder"):
        decode_ensemble(preds, ["median"], tax, "top2_sigma", 0.3)


def test_test_time_views_are_averaged_before_heads_and_members():
    rng = np.random.default_rng(0)
    member_views = [rng.dirichlet(np.ones(5), size=(3, 2, 4)).astype(np.float32) for _ in range(2)]  # (T, H, N, C)
    preds = EnsemblePredictions.from_views(np.arange(4), member_views, ("identity", "hflip", "down75"))
    assert np.array_equal(preds.members[0], member_views[0].mean(axis=0))
    assert preds.views == ("identity", "hflip", "down75")
    assert np.allclose(preds.mean, np.mean([v.mean(axis=(0, 1)) for v in member_views], axis=0))
    assert preds.member_views[1] is member_views[1]
    single = EnsemblePredictions.from_views(np.arange(4), [v[:1] for v in member_views], ["identity"])
    assert np.array_equal(single.members[0], member_views[0][0]) and single.member_views is None  # the view itself
    with pytest.raises(ValueError, match="2 views"):
        EnsemblePredictions.from_views(np.arange(4), member_views, ("identity", "hflip"))
    with pytest.raises(ValueError, match="T, H, N, C"):
        mean_over_views(member_views[0][0])


def test_frame_decoders_fit_on_validation_frames_with_a_prior_from_the_other_training_frames():
    tax = load_taxonomy()
    D = distance_matrix(tax)
    C = len(tax)
    a, b = tax.index("Sebastes diploproa"), tax.index("Porifera")  # far apart
    # training annotations: frames 0-9 hold two a's, 10-19 two b's; frames 100-103 are the validation frames
    train_frames = np.concatenate([np.repeat(np.arange(20), 2), np.repeat(np.arange(100, 104), 2)])
    train_labels = np.concatenate([np.repeat([a, b], 20), np.repeat([a, a, b, b], 2)])

    def rois(truth, frames):  # per frame one sure ROI and one leaning to the other label
        probs = np.full((len(truth), C), 1e-4)
        other = np.where(truth == a, b, a)
        sure = np.arange(len(truth)) % 2 == 0
        probs[np.arange(len(truth)), truth] += np.where(sure, 0.9, 0.45)
        probs[np.arange(len(truth)), other] += np.where(sure, 0.05, 0.5)
        probs /= probs.sum(axis=1, keepdims=True)
        return EnsemblePredictions(np.arange(len(truth)), [probs[None]], truth, frame_ids=np.asarray(frames))

    val = rois(np.repeat([a, a, b, b], 2), np.repeat(np.arange(100, 104), 2))
    prior = fit_frame_prior(val, train_frames, train_labels, D)
    assert np.array_equal(prior.K, cooccurrence_prior(train_frames[:40], train_labels[:40], C))  # not val frames
    assert set(prior.weights) == set(FRAME_DECODERS) and all(w > 0 for w in prior.weights.values())
    test = rois(np.repeat([b, a, b], 2), [7, 7, 8, 8, 9, 9])
    decoded = decode_ensemble(test, ["argmax", *FRAME_DECODERS], tax, "top2_sigma", 0.3, frame_prior=prior)
    assert (decoded.labels["argmax"] != test.labels).sum() == 3  # every leaning ROI
    assert all((decoded.labels[name] == test.labels).all() for name in FRAME_DECODERS)
    q = frame_mean_field(test.mean, test.frame_ids, prior.K, prior.weights["frame_argmax"])
    assert np.array_equal(decoded.labels["frame_argmax"], q.argmax(axis=1))
    test.frame_ids = None
    skipped = decode_ensemble(test, FRAME_DECODERS, tax, "top2_sigma", 0.3, frame_prior=prior).skipped
    assert set(skipped) == set(FRAME_DECODERS) and "no frame ids" in skipped["frame_bayes"]
    val.frame_ids = None
    assert fit_frame_prior(val, train_frames, train_labels, D) is None
    assert isinstance(prior, FramePrior) and prior.iterations == 1
