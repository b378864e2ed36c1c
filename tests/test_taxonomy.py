import json

import numpy as np
import pytest

from src.taxonomy import RANKS, distance, distance_matrix, dwce_weights_paper, dwce_weights_team, load_taxonomy

TAX = load_taxonomy()
D = distance_matrix(TAX)


def test_shipped_taxonomy_matches_official(shared_data):
    official = json.loads((shared_data / "taxonomy" / "official_metric_taxonomy.json").read_text())
    assert set(official) == set(TAX.names)
    for name in TAX.names:
        assert tuple(official[name][r.capitalize()] for r in RANKS) == TAX.lineages[TAX.index(name)]
    categories = (shared_data / "categories.csv").read_text().splitlines()[1:]
    assert [line.split(",", 1)[1] for line in categories] == list(TAX.names)
    assert TAX.category_ids == tuple(range(1, 80))


def test_distance_matrix_checks_from_design():
    assert D.shape == (79, 79) and D.dtype.kind == "i"
    assert (D == D.T).all() and (np.diag(D) == 0).all() and D.max() == 12
    assert round(D.mean(), 4) == 8.8274
    rows = D.sum(axis=1)
    assert rows.min() == 440 and TAX.names[rows.argmin()] == "Porifera"
    assert rows.max() == 835 and TAX.names[rows.argmax()] == "Octopus rubescens"
    ones = {frozenset((TAX.names[a], TAX.names[b])) for a, b in np.argwhere(D == 1)}
    assert ones == {frozenset(p) for p in [
        ("Scotoplanes", "Scotoplanes globosa"), ("Asteroidea", "Brisingida"), ("Paragorgia", "Paragorgia arborea"),
        ("Actiniaria", "Hormathiidae"), ("Porifera", "Hexactinellida"), ("Asbestopluma", "Asbestopluma monticola"),
        ("Sebastes", "Sebastes diploproa")]}
    assert D[TAX.index("Abyssocucumis abyssorum"), TAX.index("Acanthascinae")] == 11


def test_matrix_equals_pairwise_rule():
    assert all(D[i, j] == distance(a, b, TAX) for i, a in enumerate(TAX.names) for j, b in enumerate(TAX.names))


def test_distance_by_hand():
    # Sebastes vs Sebastolobus: both genera of Sebastidae, only the genus differs -> 2.
    assert distance("Sebastes", "Sebastolobus", TAX) == 2
    # Sebastes diploproa (species) vs Sebastolobus (genus): genus differs (2), species set on one side (1).
    assert distance("Sebastes diploproa", "Sebastolobus", TAX) == 3
    # a species vs its own genus: only the species rank is set on one side -> 1.
    assert distance("Sebastes diploproa", "Sebastes", TAX) == 1
    # a non-standard concept adds one for its own side when the pair differs.
    def lineage_only(a, b):
        return sum(2 if (x and y and x != y) else int(bool(x) != bool(y))
                   for x, y in zip(TAX.lineages[TAX.index(a)], TAX.lineages[TAX.index(b)]))
    assert distance("Caridea", "Sebastes", TAX) == lineage_only("Caridea", "Sebastes") + 1
    assert distance("Caridea", "Tunicata", TAX) == lineage_only("Caridea", "Tunicata") + 2
    assert distance("Caridea", "Caridea", TAX) == 0
    assert distance("Sebastes", "not a concept", TAX) == 12 and distance("Sebastes", "", TAX) == 12


def test_five_non_standard_concepts_and_ranks():
    odd = {n for n in TAX.names if TAX.is_non_standard(n)}
    assert odd == {"Caridea", "Acanthascinae", "Actinopterygii", "Zoantharia", "Tunicata"}
    assert TAX.rank_of("Porifera") == "phylum" and TAX.rank_of("Sebastes diploproa") == "species"
    assert TAX.rank_of("Tunicata") == "other"


def test_tree_helpers():
    assert TAX.ancestor("Sebastes diploproa", "genus") == "Sebastes"
    labels, taxa = TAX.rank_labels("phylum")
    assert labels.shape == (79,) and (labels >= 0).all()
    assert taxa[labels[TAX.index("Hexactinellida")]] == "Porifera"
    genus_labels, _ = TAX.rank_labels("genus")
    assert genus_labels[TAX.index("Porifera")] == -1
    assert list(TAX.indices(["Porifera", "nope"])) == [TAX.index("Porifera"), -1]
    with pytest.raises(KeyError, match="nope"):
        TAX.index("nope")


@pytest.mark.parametrize("build", [dwce_weights_team, dwce_weights_paper])
def test_dwce_weights_rows_sum_to_one(build):
    W = build(D)
    assert np.allclose(W.sum(axis=1), 1.0) and (W > 0).all()


def test_dwce_weight_variants_differ_as_documented():
    team, paper = dwce_weights_team(D), dwce_weights_paper(D)
    assert 0.0011 < np.diag(team).min() < np.diag(team).max() < 0.0023
    i = TAX.index("Porifera")
    assert np.isclose(team[i, i] * (D[i].sum() + 1), 1.0)
    assert np.isclose(paper[i, i] * (D[i].sum() + 79), 1.0)
