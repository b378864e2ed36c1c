"""The 79 FathomNet 2025 concepts, their taxonomy, and the competition's hierarchical distance.

The canonical class order everywhere in the project is the competition's category ids 1..79
(index = category_id - 1). The distance rule is the official metric's (docs/method.md section 1):
per rank, +2 if both lineages are set and differ, +1 if exactly one is set; +1 for each side of a
differing pair that sits at a rank outside the seven; an unknown predicted name scores 12.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
UNKNOWN_NAME_DISTANCE = 12
DEFAULT_TAXONOMY_PATH = Path(__file__).with_name("fathomnet2025_taxonomy.json")


@dataclass(frozen=True)
class Taxonomy:
    """Concept names in canonical order with their 7-rank lineages (None where a rank is unset)."""

    names: tuple[str, ...]
    category_ids: tuple[int, ...]
    lineages: tuple[tuple[str | None, ...], ...]

    def __post_init__(self):
        if not (len(self.names) == len(self.category_ids) == len(self.lineages)):
            raise ValueError("names, category_ids and lineages must have the same length")
        if len(set(self.names)) != len(self.names):
            raise ValueError("concept names must be unique")
        if any(len(lin) != len(RANKS) for lin in self.lineages):
            raise ValueError(f"every lineage needs {len(RANKS)} ranks {RANKS}")

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def index(self, name: str) -> int:
        """Column index of a concept name; KeyError naming the concept if unknown."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"unknown concept name {name!r}") from None

    def indices(self, names) -> np.ndarray:
        """Column indices for many names; -1 for names that are not concepts (vectorised).

        A pandas categorical is mapped through its categories only, then its integer codes."""
        concepts = pd.Index(self.names)
        if isinstance(getattr(names, "dtype", None), pd.CategoricalDtype):
            codes = np.asarray(names.cat.codes if isinstance(names, pd.Series) else names.codes)
            lookup = np.append(concepts.get_indexer(names.cat.categories if isinstance(names, pd.Series)
                                                    else names.categories), -1)
            return lookup[codes]  # code -1 (missing) takes the appended -1
        return concepts.get_indexer(pd.Index(np.asarray(list(names) if not hasattr(names, "__len__") else names,
                                                        dtype=object))).astype(np.int64, copy=False)

    def ancestor(self, name: str, rank: str) -> str | None:
        """The concept's taxon at `rank` (None where unset)."""
        return self.lineages[self.index(name)][RANKS.index(rank)]

    def is_non_standard(self, name: str) -> bool:
        """True for concepts at a rank outside the seven (Caridea, Acanthascinae, ...)."""
        return name not in self.lineages[self.index(name)]

    def rank_of(self, name: str) -> str:
        """The rank the concept is named at: one of RANKS, or 'other' for the non-standard five."""
        lineage = self.lineages[self.index(name)]
        return RANKS[lineage.index(name)] if name in lineage else "other"

    def rank_labels(self, rank: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """Per concept, the index of its ancestor at `rank` among that rank's taxa (-1 where unset).

        Returns (labels (C,) int64, taxa names in label order, sorted)."""
        column = [lin[RANKS.index(rank)] for lin in self.lineages]
        taxa = tuple(sorted({t for t in column if t is not None}))
        lookup = {t: i for i, t in enumerate(taxa)}
        return np.array([lookup.get(t, -1) if t else -1 for t in column], dtype=np.int64), taxa


def load_taxonomy(path: str | Path = DEFAULT_TAXONOMY_PATH) -> Taxonomy:
    """Load the shipped taxonomy JSON (or one of the same layout), ordered by category id."""
    data = json.loads(Path(path).read_text())
    if [r.lower() for r in data["ranks"]] != list(RANKS):
        raise ValueError(f"{path}: ranks must be {RANKS}, got {data['ranks']}")
    concepts = sorted(data["concepts"], key=lambda c: c["category_id"])
    return Taxonomy(
        names=tuple(c["name"] for c in concepts),
        category_ids=tuple(int(c["category_id"]) for c in concepts),
        lineages=tuple(tuple(c["lineage"]) for c in concepts),
    )


def distance(truth: str, pred: str, taxonomy: Taxonomy) -> int:
    """Hierarchical distance between two concept names (official rule; unknown prediction = 12)."""
    if pred not in taxonomy._index:
        return UNKNOWN_NAME_DISTANCE
    if truth == pred:
        return 0
    total = 0
    for a, b in zip(taxonomy.lineages[taxonomy.index(truth)], taxonomy.lineages[taxonomy.index(pred)]):
        if a is not None and b is not None:
            total += 2 * (a != b)
        elif (a is None) != (b is None):
            total += 1
    return total + taxonomy.is_non_standard(truth) + taxonomy.is_non_standard(pred)


def distance_matrix(taxonomy: Taxonomy) -> np.ndarray:
    """(C, C) int64 matrix D[truth, pred] of the official distance, in the taxonomy's class order."""
    lineage = np.array([[t if t is not None else "" for t in lin] for lin in taxonomy.lineages], dtype=object)
    is_set = lineage != ""
    both = is_set[:, None, :] & is_set[None, :, :]
    differ = lineage[:, None, :] != lineage[None, :, :]
    one = is_set[:, None, :] ^ is_set[None, :, :]
    per_rank = (2 * (both & differ) + one).sum(axis=-1)
    odd = np.array([taxonomy.is_non_standard(n) for n in taxonomy.names], dtype=np.int64)
    D = per_rank + odd[:, None] + odd[None, :]
    np.fill_diagonal(D, 0)
    return D.astype(np.int64)


def dwce_weights_team(D: np.ndarray) -> np.ndarray:
    """DW-CE weights the Dalhousie team's code used: (D + I) / rowsum(D + I)."""
    W = D.astype(np.float64) + np.eye(len(D))
    return W / W.sum(axis=1, keepdims=True)


def dwce_weights_paper(D: np.ndarray) -> np.ndarray:
    """DW-CE weights as the paper's text reads: (D + 1) / rowsum(D + 1)."""
    W = D.astype(np.float64) + 1.0
    return W / W.sum(axis=1, keepdims=True)


ROOT_NAME = "<root>"


@dataclass(frozen=True)
class TaxonomyTree:
    """The taxonomy as one rooted tree over every taxon of the lineages, with one leaf per concept.

    Node 0 is a virtual root; then every taxon (rank, name) that some lineage sets, its parent being the
    nearest set taxon above it in the lineage (the root for a kingdom); then the C concept leaves, leaf c
    at node `leaf[c]`. A concept's leaf hangs under its anchor taxon: its own (rank, name) node when it is
    named at one of the seven ranks (so the concept 'Porifera' is the leaf child "Porifera itself" of the
    phylum Porifera, beside the class Hexactinellida, and 'Sebastes' sits beside 'Sebastes diploproa'
    under the genus Sebastes), or, for the five concepts at a rank outside the seven (Caridea,
    Acanthascinae, Actinopterygii, Zoantharia, Tunicata), the deepest taxon their lineage sets (Caridea
    under the order Decapoda, Tunicata under the phylum Chordata). This is the convention of
    `src.ensemble.taxonomy_graph`. p(node) = sum of the probabilities of the concepts under it
    (`member`), so every concept's probability mass lies in exactly one leaf.
    """

    names: tuple[str, ...]  # (V,) '<root>', taxon names, then the concept names
    ranks: tuple[str, ...]  # (V,) 'root', one of RANKS, or 'concept' for the leaves
    parent: np.ndarray  # (V,) int64 parent node, -1 for the root
    member: np.ndarray  # (V, C) bool: concept c lies under node v
    leaf: np.ndarray  # (C,) int64 leaf node of each concept

    @property
    def num_concepts(self) -> int:
        return self.member.shape[1]

    @cached_property
    def depth(self) -> np.ndarray:
        """(V,) edges from the root (root 0)."""
        depth = np.zeros(len(self.parent), dtype=np.int64)
        for v in range(1, len(self.parent)):  # parents precede children
            depth[v] = depth[self.parent[v]] + 1
        return depth

    @cached_property
    def height(self) -> np.ndarray:
        """(V,) edges of the longest way down to a leaf (leaves 0)."""
        height = np.zeros(len(self.parent), dtype=np.int64)
        for v in range(len(self.parent) - 1, 0, -1):  # children follow parents
            height[self.parent[v]] = max(height[self.parent[v]], height[v] + 1)
        return height

    def path(self, concept: int) -> list[int]:
        """Nodes from the root down to the concept's leaf."""
        nodes = [int(self.leaf[concept])]
        while self.parent[nodes[-1]] >= 0:
            nodes.append(int(self.parent[nodes[-1]]))
        return nodes[::-1]

    @cached_property
    def target_table(self) -> np.ndarray:
        """(C + V, C) bool training targets: row c < C is the concept c alone, row C + v the concepts under
        node v (`src.losses.SetTargetLoss` reads a target id t as row t)."""
        return np.concatenate([np.eye(self.num_concepts, dtype=bool), self.member])

    def target_rank_labels(self, rank_labels: np.ndarray) -> np.ndarray:
        """(C + V,) a rank's label for every target id of `target_table`, from the concepts' (C,) labels
        (`Taxonomy.rank_labels`): the label all the target's concepts share, -1 where they do not (a set
        above that rank, or concepts above it), so per-rank auxiliary heads can train on set targets too."""
        rank_labels = np.asarray(rank_labels, dtype=np.int64)
        values = np.where(self.target_table, rank_labels[None, :], -1)
        low = np.where(self.target_table, rank_labels[None, :], np.iinfo(np.int64).max).min(axis=1)
        return np.where(low == values.max(axis=1), low, -1)

    def taxon_node(self, name: str) -> int:
        """The node of a taxon name (a taxon, not a concept leaf); KeyError naming it if unknown."""
        nodes = [v for v, (n, r) in enumerate(zip(self.names, self.ranks)) if n == name and r in RANKS]
        if len(nodes) != 1:
            raise KeyError(f"{name!r} is not a taxon of the taxonomy" if not nodes
                           else f"taxon name {name!r} is ambiguous (several ranks)")
        return nodes[0]


def taxonomy_tree(taxonomy: Taxonomy) -> TaxonomyTree:
    """Build the `TaxonomyTree` of a taxonomy (raises if a taxon's parent differs between lineages)."""
    taxa: dict[tuple[str, str], int] = {}
    parent: list[int] = [-1]
    for lineage in taxonomy.lineages:
        above = 0
        for rank, name in zip(RANKS, lineage):
            if name is None:
                continue
            node = taxa.get((rank, name))
            if node is None:
                node = taxa[(rank, name)] = len(parent)
                parent.append(above)
            elif parent[node] != above:
                raise ValueError(f"taxon {rank} {name!r} has different parents in different lineages")
            above = node
    C = len(taxonomy)
    first_leaf = len(parent)
    for name, lineage in zip(taxonomy.names, taxonomy.lineages):
        rank = taxonomy.rank_of(name)
        anchor = (rank, name) if rank != "other" else [(r, t) for r, t in zip(RANKS, lineage) if t is not None][-1]
        parent.append(taxa[anchor])
    parent_arr = np.array(parent, dtype=np.int64)
    member = np.zeros((len(parent), C), dtype=bool)
    leaf = np.arange(first_leaf, first_leaf + C)
    for c, v in enumerate(leaf):
        while v >= 0:
            member[v, c] = True
            v = parent_arr[v]
    ordered = sorted(taxa.items(), key=lambda item: item[1])
    return TaxonomyTree(names=(ROOT_NAME, *(n for (_, n), _ in ordered), *taxonomy.names),
                        ranks=("root", *(r for (r, _), _ in ordered), *("concept",) * C),
                        parent=parent_arr, member=member, leaf=leaf)
