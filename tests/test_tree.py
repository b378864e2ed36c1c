"""The taxonomy tree behind HXE, set targets and coarse agreement."""
import numpy as np

from src.taxonomy import RANKS, load_taxonomy, taxonomy_tree


def test_tiny_tree_structure(tiny_taxonomy):
    tree = taxonomy_tree(tiny_taxonomy)
    names = lambda nodes: [tree.names[v] for v in nodes]
    assert names(tree.path(0)) == ["<root>", "K", "P1", "C1", "O1", "F1", "A", "A a", "A a"]
    assert names(tree.path(1)) == ["<root>", "K", "P1", "C1", "O1", "F1", "A", "A"]  # leaf "A itself" under genus A
    assert names(tree.path(3)) == ["<root>", "K", "P1", "P1"]
    assert names(tree.path(4)) == ["<root>", "K", "P1", "C2", "Odd"]  # under its deepest set taxon
    assert tree.ranks[tree.leaf[4]] == "concept" and tree.ranks[tree.path(4)[-2]] == "class"
    # p(node) sums the concepts under it; every concept lies in exactly one leaf
    assert tree.member[tree.taxon_node("P1")].tolist() == [True, True, True, True, True, False]
    assert tree.member[tree.taxon_node("A")].tolist() == [True, True, False, False, False, False]
    assert (tree.member[tree.leaf] == np.eye(6, dtype=bool)).all()
    assert tree.height[0] == 8 and tree.height[tree.leaf].max() == 0
    assert tree.height[tree.taxon_node("C2")] == 1 and tree.height[tree.taxon_node("P1")] == 6
    assert tree.depth[tree.leaf[3]] == 3 and tree.depth[tree.leaf[0]] == 8
    table = tree.target_table
    assert table.shape == (6 + len(tree.names), 6) and (table[:6] == np.eye(6)).all()
    assert (table[6 + tree.taxon_node("F1")] == tree.member[tree.taxon_node("F1")]).all()


def test_real_tree_covers_every_taxon():
    taxonomy = load_taxonomy()
    tree = taxonomy_tree(taxonomy)
    taxa = {(r, t) for lin in taxonomy.lineages for r, t in zip(RANKS, lin) if t}
    assert len(tree.names) == 1 + len(taxa) + 79 == 267
    assert tree.member[0].all() and (tree.member.sum(axis=0) == np.array([len(tree.path(c)) for c in range(79)])).all()
    caridea = tree.path(taxonomy.index("Caridea"))
    assert [tree.names[v] for v in caridea[-2:]] == ["Decapoda", "Caridea"]
    porifera = tree.taxon_node("Porifera")
    assert tree.member[porifera, taxonomy.index("Hexactinellida")] and tree.member[porifera, taxonomy.index("Porifera")]


def test_target_rank_labels(tiny_taxonomy):
    tree = taxonomy_tree(tiny_taxonomy)
    genus, _ = tiny_taxonomy.rank_labels("genus")  # A a, A -> A; B b -> B; P1, Odd -> -1; Q q -> Q
    family, _ = tiny_taxonomy.rank_labels("family")
    by_target = tree.target_rank_labels(genus)
    assert (by_target[:6] == genus).all()
    node = lambda name: 6 + tree.taxon_node(name)
    assert by_target[node("A")] == genus[0] and by_target[node("F1")] == -1 and by_target[node("P1")] == -1
    assert tree.target_rank_labels(family)[node("F1")] == family[0] and tree.target_rank_labels(family)[node("C2")] == -1
