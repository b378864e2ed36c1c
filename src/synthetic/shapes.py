"""Taxonomy-driven appearance ("genes") and sprite drawing for the generated FathomNet-like benchmark.

Each concept gets deterministic genes from hashes of its lineage, so near taxa look alike:
  - a body plan from the deepest lineage taxon found in PLAN_BY_TAXON (phylum, or a class with a
    distinctive shape), else from a hash of the phylum;
  - the class sets the colour family and most of the shape parameters;
  - the order the texture (type, contrast) and the secondary colour;
  - family / genus / species finer details: proportions, texture scale, spot density, appendage
    counts, accent colour of tips and eyes.
Ranks a concept leaves unset (e.g. `Asteroidea` stops at class) get concept-specific pseudo-taxa and
more per-instance variation, like an unidentified animal of that group.

Sprites are drawn in a canonical orientation at 2x resolution with OpenCV, then shrunk and rotated:
`draw_sprite(instance, size, angle, rng) -> (bgr float32 HxWx3, alpha float32 HxW)`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import cv2
import numpy as np

from src.taxonomy import RANKS, Taxonomy

# Body plans keyed by taxon name at any rank; the deepest match in a lineage wins.
PLAN_BY_TAXON = {
    "Echinodermata": "star", "Holothuroidea": "cucumber", "Echinoidea": "urchin",
    "Porifera": "vase",
    "Cnidaria": "branching", "Hexacorallia": "anemone", "Hydrozoa": "bell",
    "Chordata": "fish", "Thaliacea": "tube", "Tunicata": "tube",
    "Arthropoda": "crustacean",
    "Mollusca": "shell", "Gastropoda": "snail", "Cephalopoda": "octopus",
    "Annelida": "tube",
}
UPRIGHT_PLANS = frozenset({"vase", "branching", "anemone"})  # stand on the seafloor
TEXTURES = ("plain", "spots", "bands", "stripes", "rings", "speckle", "mottled", "gradient")
N_SHAPE = 8
SUPERSAMPLE = 2


def hash_unit(key: str, n: int = 32) -> np.ndarray:
    """n floats in [0, 1] from a stable hash of `key` (blake2b, independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=2 * n).digest()
    return np.frombuffer(digest, dtype="<u2").astype(np.float64) / 65535.0


@dataclass(frozen=True)
class Genes:
    """Appearance of one concept (or, after `sample_instance`, of one drawn individual)."""

    plan: str
    shape: tuple[float, ...]  # N_SHAPE floats in [0, 1], read by the plan's drawer
    count_delta: int  # genus/species change of appendage counts
    body_hsv: tuple[float, float, float]  # OpenCV HSV (H in 0..180)
    sec_hsv: tuple[float, float, float]
    acc_hsv: tuple[float, float, float]
    texture: str
    tex_contrast: float
    tex_freq: float  # cycles across the sprite
    spot_density: float  # 0..1
    jitter: float  # per-instance variation multiplier (>1 for concepts named at coarse ranks)
    relatives: tuple[int, ...] = ()  # finer concepts of the same group this concept may look like
    lookalikes: tuple[int, ...] = ()  # concepts of other classes an atypical individual looks like
    p_relative: float = 0.0  # probability that an individual is drawn like one of its relatives


@dataclass(frozen=True)
class Appearance:
    """How much of an animal's look follows its taxon, and how often an individual looks like another
    concept. Real errors cross phyla because deep-sea animals of unrelated groups share colours and
    silhouettes once small or blurred; these knobs set that (calibrated with `python -m bench.realism`)."""

    p_class_colour: float = 0.45    # share of concepts coloured like their class
    p_order_colour: float = 0.15    # ... like their order; the rest get a colour of their own
    colour_spread: float = 1.0      # scale of the finer ranks' hue / saturation / value offsets
    p_relative: float = 0.25        # a concept named at family..order rank drawn like a finer relative
    p_relative_coarse: float = 0.3  # the same for concepts named at class or phylum rank
    n_lookalikes: int = 2           # look-alikes of another class per concept
    fine_shape: float = 1.8         # scale of the genus and species steps of the shape walk
    p_own_texture: float = 0.5      # share of concepts with a texture of their own (else their order's)
    coarse_jitter: float = 0.15     # extra per-instance variation per rank a concept leaves unset
    p_phylum_palette: float = 0.6   # share of concepts whose colour comes from their phylum's few colours
    palette_size: int = 3           # colours per phylum palette (of the COLOUR_ARCHETYPES)


# Deep-sea animals of every phylum share a few colours (OpenCV HSV): red, orange, salmon pink, pale,
# purple, yellow, brown, greyish pink. Colour therefore says little about the taxon.
COLOUR_ARCHETYPES = ((2.0, 200.0, 165.0), (12.0, 215.0, 215.0), (172.0, 105.0, 225.0), (18.0, 40.0, 225.0),
                     (145.0, 125.0, 150.0), (26.0, 190.0, 215.0), (12.0, 130.0, 120.0), (0.0, 70.0, 175.0))
# Coarse silhouettes that stay recognisable when an animal is a few pixels wide.
SILHOUETTE = {"star": "radial", "urchin": "radial", "octopus": "radial", "bell": "radial", "cucumber": "long",
              "tube": "long", "fish": "long", "crustacean": "long", "vase": "blob", "shell": "blob", "snail": "blob",
              "anemone": "upright", "branching": "upright"}


def _rank_keys(lineage: tuple[str | None, ...], concept: str) -> list[tuple[str, bool]]:
    """Per rank phylum..species: (hash key, is_set). Unset ranks get concept-specific pseudo-taxa."""
    keys = []
    for i in range(1, len(RANKS)):
        if lineage[i] is not None:
            keys.append(("/".join(str(t) for t in lineage[: i + 1]), True))
        else:
            keys.append((f"{concept}@{RANKS[i]}", False))
    return keys


def colour_archetype(key: str, phylum_key: str, look: Appearance) -> int:
    """Index of the colour archetype of the taxon `key`. A share p_phylum_palette of taxa take one of their
    phylum's `palette_size` colours (a colour confusion then stays inside the phylum), the rest any colour."""
    pool = np.arange(len(COLOUR_ARCHETYPES))
    if hash_unit(f"{key}#palette")[0] < look.p_phylum_palette:
        pool = np.sort(np.argsort(hash_unit(f"{phylum_key}#palette", len(pool)), kind="stable")[: look.palette_size])
    return int(pool[int(hash_unit(f"{key}#colour")[0] * len(pool)) % len(pool)])


def _body_colour(name: str, u: dict[str, np.ndarray], keys: dict[str, str], look: Appearance) -> tuple:
    """Body HSV: a colour archetype chosen at the class, the order or the concept itself, plus small
    offsets from the finer ranks (near relatives of one colour differ a little)."""
    pick = hash_unit(f"{name}#colour-level")[0]
    level = ("class" if pick < look.p_class_colour else
             "order" if pick < look.p_class_colour + look.p_order_colour else None)
    h0, s0, v0 = COLOUR_ARCHETYPES[colour_archetype(keys[level] if level else name, keys["phylum"], look)]
    k = look.colour_spread
    hue = (h0 + k * (10 * (u["family"][0] - 0.5) + 8 * (u["genus"][0] - 0.5) + 6 * (u["species"][0] - 0.5))) % 180
    sat = s0 + k * (40 * (u["order"][1] - 0.5) + 24 * (u["genus"][1] - 0.5))
    val = v0 + k * (30 * (u["family"][2] - 0.5) + 20 * (u["species"][2] - 0.5))
    return float(hue), float(np.clip(sat, 0, 255)), float(np.clip(val, 0, 255))


def concept_genes(taxonomy: Taxonomy, look: Appearance = Appearance()) -> list[Genes]:
    """Genes for every concept in the taxonomy's canonical order."""
    out: list[Genes] = []
    for name, lineage in zip(taxonomy.names, taxonomy.lineages):
        keys = _rank_keys(lineage, name)
        u = {rank: hash_unit(key) for rank, (key, _) in zip(RANKS[1:], keys)}
        n_unset = sum(not is_set for _, is_set in keys)
        plan = next((PLAN_BY_TAXON[t] for t in (name, *reversed(lineage)) if t in PLAN_BY_TAXON),
                    PLANS[int(u["phylum"][0] * len(PLANS)) % len(PLANS)])
        # Shape: a random walk down the tree (the phylum already chose the plan): big steps at class,
        # small ones at species.
        weights = {"class": 0.75, "order": 0.4, "family": 0.28, "genus": 0.18 * look.fine_shape,
                   "species": 0.1 * look.fine_shape}
        shape = 0.5 + sum(w * (u[r][3:3 + N_SHAPE] - 0.5) for r, w in weights.items())
        count_delta = int(np.floor(u["genus"][12] * 3)) - 1 + (u["species"][12] > 0.8) - (u["species"][12] < 0.2)
        body = _body_colour(name, u, dict(zip(RANKS[1:], (key for key, _ in keys))), look)
        sec_hue = (body[0] + 20 + 140 * u["order"][13] + 10 * (u["family"][13] - 0.5)) % 180
        sec = (sec_hue, 60 + 160 * u["order"][14], 60 + 170 * u["order"][15])
        acc = ((180 * u["species"][13] + 30 * u["genus"][13]) % 180, 120 + 130 * u["species"][14],
               150 + 100 * u["species"][15])
        own = hash_unit(f"{name}#texture")
        texture_draw = own[1] if own[0] < look.p_own_texture else u["order"][16]
        out.append(Genes(
            plan=plan,
            shape=tuple(float(x) for x in np.clip(shape, 0.0, 1.0)),
            count_delta=int(count_delta),
            body_hsv=body,
            sec_hsv=tuple(float(np.clip(x, 0, 255)) for x in sec),
            acc_hsv=tuple(float(np.clip(x, 0, 255)) for x in acc),
            texture=TEXTURES[int(texture_draw * len(TEXTURES)) % len(TEXTURES)],
            tex_contrast=float(0.35 + 0.5 * u["order"][17]),
            tex_freq=float(2.0 + 5.0 * u["family"][17] + 1.0 * (u["genus"][17] - 0.5)),
            spot_density=float(np.clip(0.2 + 0.6 * u["genus"][18] + 0.2 * (u["species"][18] - 0.5), 0, 1)),
            jitter=1.0 + look.coarse_jitter * n_unset,
        ))
    p_coarse = [look.p_relative_coarse if taxonomy.rank_of(n) in ("phylum", "class") else look.p_relative
                for n in taxonomy.names]
    return [replace(g, relatives=_relatives(taxonomy, out, i), lookalikes=_lookalikes(taxonomy, out, i, look),
                    p_relative=p_coarse[i]) for i, g in enumerate(out)]


def _relatives(taxonomy: Taxonomy, genes: list[Genes], i: int) -> tuple[int, ...]:
    """Finer concepts inside concept i's group with the same body plan: an animal labelled only
    `Porifera` may be any sponge. Concepts at a rank outside the seven (Caridea, Zoantharia, ...)
    have none: their lineage does not say which concepts they contain."""
    name, lineage = taxonomy.names[i], taxonomy.lineages[i]
    if taxonomy.is_non_standard(name):
        return ()
    depth = sum(t is not None for t in lineage)
    return tuple(j for j, other in enumerate(taxonomy.lineages)
                 if j != i and genes[j].plan == genes[i].plan and sum(t is not None for t in other) > depth
                 and all(a is None or a == b for a, b in zip(lineage, other)))


def _lookalikes(taxonomy: Taxonomy, genes: list[Genes], i: int, look: Appearance) -> tuple[int, ...]:
    """The concepts of other classes whose colour and coarse silhouette are closest to concept i's: what
    an atypical or badly seen individual of i is mistaken for."""
    def colour_gap(a, b):
        dh = abs((a[0] - b[0] + 90) % 180 - 90)
        return dh / 15 + abs(a[1] - b[1]) / 60 + abs(a[2] - b[2]) / 60

    class_of = [lineage[RANKS.index("class")] or name for name, lineage in zip(taxonomy.names, taxonomy.lineages)]
    gaps = [(colour_gap(genes[i].body_hsv, g.body_hsv) + 0.7 * (SILHOUETTE[g.plan] != SILHOUETTE[genes[i].plan]), j)
            for j, g in enumerate(genes) if class_of[j] != class_of[i]]
    return tuple(j for _, j in sorted(gaps)[: look.n_lookalikes])


def individual_look(genes: list[Genes], label: int, rng: np.random.Generator, p_lookalike: float = 0.0) -> Genes:
    """Which concept an individual of class `label` is drawn like. With probability p_lookalike one of its
    look-alikes of another class (an atypical individual, or one the camera renders misleadingly); else a
    concept named at a coarse rank looks, with its own probability, like one of its finer relatives. The
    individual keeps its own variation (its habitat is its label's: src/synthetic/habitat.py)."""
    g = genes[label]
    look = None
    if g.lookalikes and rng.random() < p_lookalike:
        look = genes[int(rng.choice(g.lookalikes))]
    elif g.relatives and rng.random() < g.p_relative:
        look = genes[int(rng.choice(g.relatives))]
    if look is None:
        return g
    return replace(look, jitter=g.jitter, relatives=g.relatives, lookalikes=g.lookalikes, p_relative=g.p_relative)


def instance_genes(genes: list[Genes], label: int, rng: np.random.Generator, p_lookalike: float = 0.0) -> Genes:
    """Genes of one drawn individual of class `label`: its look (`individual_look`) with per-instance variation."""
    return sample_instance(individual_look(genes, label, rng, p_lookalike), rng)


def sample_instance(genes: Genes, rng: np.random.Generator, scale: float = 1.0) -> Genes:
    """One individual: the concept's genes with per-instance variation (more for coarse concepts), times
    `scale` (small for a sibling of an individual already drawn in the frame)."""
    j = genes.jitter * scale
    shape = np.clip(np.asarray(genes.shape) + rng.normal(0, 0.04 * j, N_SHAPE), 0, 1)
    count_delta = genes.count_delta + (int(rng.choice((-1, 1))) if rng.random() < 0.08 * j else 0)

    def hsv(c, dh, ds):
        return ((c[0] + rng.normal(0, dh * j)) % 180, float(np.clip(c[1] + rng.normal(0, ds * j), 0, 255)),
                float(np.clip(c[2] + rng.normal(0, ds * j), 0, 255)))

    return replace(
        genes, shape=tuple(float(x) for x in shape), count_delta=count_delta,
        body_hsv=hsv(genes.body_hsv, 2.5, 14), sec_hsv=hsv(genes.sec_hsv, 4, 18), acc_hsv=hsv(genes.acc_hsv, 4, 18),
        tex_freq=float(genes.tex_freq * np.exp(rng.normal(0, 0.1 * j))),
        spot_density=float(np.clip(genes.spot_density + rng.normal(0, 0.06 * j), 0, 1)),
    )


def hsv_to_bgr(hsv: tuple[float, float, float]) -> np.ndarray:
    pixel = np.array([[[hsv[0] % 180, hsv[1], hsv[2]]]], dtype=np.float32)
    # OpenCV's float HSV uses H in degrees and S, V in 0..1.
    pixel[..., 0] *= 2.0
    pixel[..., 1:] /= 255.0
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0] * 255.0


# ---------------------------------------------------------------- primitive drawing (2x canvas)

_SHIFT = 4
_ONE = 1 << _SHIFT


def _pts(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p, dtype=np.float64) * _ONE).astype(np.int32).reshape(-1, 2)


def _fill(mask, pts):
    cv2.fillPoly(mask, [_pts(pts)], 255, cv2.LINE_AA, _SHIFT)


def _circle(mask, center, radius):
    cv2.circle(mask, tuple(int(v) for v in _pts(center)[0]), max(int(radius * _ONE), _ONE // 2), 255, -1,
               cv2.LINE_AA, _SHIFT)


def _ring(mask, center, radius, thickness):
    cv2.circle(mask, tuple(int(v) for v in _pts(center)[0]), max(int(radius * _ONE), 1), 255,
               max(int(round(thickness)), 1), cv2.LINE_AA, _SHIFT)


def _ellipse(mask, center, axes, angle=0.0, thickness=-1):
    c = tuple(int(v) for v in _pts(center)[0])
    ax = (max(int(axes[0] * _ONE), 1), max(int(axes[1] * _ONE), 1))
    cv2.ellipse(mask, c, ax, float(angle), 0, 360, 255, thickness, cv2.LINE_AA, _SHIFT)


def _polyline(mask, pts, thickness):
    cv2.polylines(mask, [_pts(pts)], False, 255, max(int(round(thickness)), 1), cv2.LINE_AA, _SHIFT)


def _curve(start, angle, length, bend=0.0, wave=0.0, freq=1.0, phase=0.0, n=12) -> np.ndarray:
    """Centreline points: heading turns by `bend` radians along the length, plus a lateral wave."""
    t = np.linspace(0.0, 1.0, n)
    heading = angle + bend * t
    step = length / (n - 1)
    d = np.stack([np.cos(heading), np.sin(heading)], 1) * step
    pts = np.asarray(start, dtype=np.float64) + np.concatenate([[[0.0, 0.0]], np.cumsum(d[1:], 0)])
    if wave:
        normal = np.stack([-np.sin(heading), np.cos(heading)], 1)
        pts = pts + normal * (wave * length * np.sin(2 * np.pi * freq * t + phase) * t)[:, None]
    return pts


def _limb(mask, pts, widths, round_ends=True):
    """Fill a band of varying width around a centreline (arms, bodies, tubes)."""
    tangent = np.gradient(pts, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1) * (np.asarray(widths)[:, None] / 2)
    _fill(mask, np.concatenate([pts + normal, (pts - normal)[::-1]]))
    if round_ends:
        _circle(mask, pts[0], widths[0] / 2)
        _circle(mask, pts[-1], widths[-1] / 2)


@dataclass
class _Layers:
    """Masks a plan draws into: body (textured), sec (secondary colour), acc (accent), dark (holes)."""

    body: np.ndarray
    sec: np.ndarray
    acc: np.ndarray
    dark: np.ndarray
    n: int

    @property
    def c(self) -> np.ndarray:
        return np.array([self.n / 2.0, self.n / 2.0])

    @property
    def r(self) -> float:
        return 0.44 * self.n


# ---------------------------------------------------------------- body plans
# Canonical orientation: length along x, "up" is -y; everything within radius L.r of the centre.

def _count(base: float, delta: int, lo: int, hi: int) -> int:
    return int(np.clip(round(base) + delta, lo, hi))


def _draw_star(L: _Layers, g: Genes, rng, octopus=False):
    s, R, c = g.shape, L.r, L.c
    n_arms = 8 if octopus else _count(5 + 3 * s[0], g.count_delta, 4, 11)
    disc = R * ((0.3 if octopus else 0.12) + 0.2 * s[1])
    arm_w = R * (0.06 + 0.16 * s[2])
    wave = (0.12 + 0.15 * s[3]) if octopus else 0.18 * s[3]
    bend = (s[4] - 0.5) * (2.5 if octopus else 1.2)
    feathery = not octopus and s[5] > 0.62
    start = rng.uniform(0, 2 * np.pi)
    for k in range(n_arms):
        a = start + 2 * np.pi * k / n_arms + rng.normal(0, 0.08)
        length = (R - 0.2 * disc) * rng.uniform(0.8, 1.0) * (0.9 if octopus else 1.0)
        pts = _curve(c, a, length, bend * rng.uniform(0.6, 1.4), wave, 1.0 + s[6], rng.uniform(0, 6.28))
        widths = arm_w * (1.0 - 0.8 * np.linspace(0, 1, len(pts))) + 1.0
        _limb(L.body, pts, widths)
        if feathery:
            for i in range(2, len(pts) - 1):
                tan = pts[i + 1] - pts[i - 1]
                nrm = np.array([-tan[1], tan[0]]) / (np.linalg.norm(tan) + 1e-9)
                for side in (-1, 1):
                    _polyline(L.sec, [pts[i], pts[i] + side * nrm * arm_w * 1.6], max(1, arm_w * 0.15))
        _circle(L.acc, pts[-1], max(arm_w * 0.35, 1.5))
    if octopus:
        _ellipse(L.body, c - np.array([0.0, disc * 0.9]), (disc * 1.1, disc * 1.3))
        _circle(L.acc, c + np.array([disc * 0.4, -disc * 0.3]), disc * 0.18)
    else:
        _circle(L.body, c, disc)
        _circle(L.acc, c, disc * 0.25)


def _draw_octopus(L, g, rng):
    _draw_star(L, g, rng, octopus=True)


def _draw_cucumber(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    t = np.linspace(0, 1, 24)
    pts = _curve(c - np.array([R * 0.95, 0.0]), rng.normal(0, 0.1), 1.9 * R, (s[0] - 0.5) * 1.2, n=24)
    width = R * (0.32 + 0.38 * s[1])
    lumps = _count(3 + 4 * s[2], g.count_delta, 2, 9)
    widths = width * np.sin(np.pi * np.clip(t, 0.02, 0.98)) ** 0.45 * (1 + 0.12 * np.sin(2 * np.pi * lumps * t))
    _limb(L.body, pts, widths + 1.0)
    n_pap = _count(4 + 7 * s[3], g.count_delta, 2, 14)
    pap_len = R * (0.06 + 0.22 * s[4])
    for i in np.linspace(3, 20, n_pap).astype(int):
        tan = pts[i + 1] - pts[i - 1]
        nrm = np.array([tan[1], -tan[0]]) / (np.linalg.norm(tan) + 1e-9)
        base = pts[i] + nrm * widths[i] * 0.45
        _polyline(L.sec, [base, base + nrm * pap_len], max(1.5, R * 0.035))
        _circle(L.acc, base + nrm * pap_len, max(1.2, R * 0.03))
    if s[5] > 0.5:  # tube feet / legs underneath
        for i in np.linspace(4, 19, 4 + int(4 * s[6])).astype(int):
            tan = pts[i + 1] - pts[i - 1]
            nrm = np.array([-tan[1], tan[0]]) / (np.linalg.norm(tan) + 1e-9)
            base = pts[i] + nrm * widths[i] * 0.4
            _polyline(L.sec, [base, base + nrm * R * 0.22], max(2, R * 0.05))


def _draw_urchin(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    body = R * (0.4 + 0.18 * s[1])
    n_sp = _count(14 + 20 * s[2], 2 * g.count_delta, 8, 40)
    sp_len = (R - body) * (0.55 + 0.45 * s[3])
    flat = 0.75 + 0.25 * s[4]
    for a in np.linspace(0, 2 * np.pi, n_sp, endpoint=False) + rng.uniform(0, 1):
        d = np.array([np.cos(a), np.sin(a) * flat])
        _polyline(L.sec, [c + d * body * 0.8, c + d * (body + sp_len * rng.uniform(0.7, 1.0))],
                  max(1, R * (0.015 + 0.03 * s[5])))
    _ellipse(L.body, c, (body, body * flat))
    _circle(L.acc, c, body * 0.12)


def _draw_vase(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    if s[0] < 0.3:  # lobed encrusting blob
        lobes = _count(3 + 4 * s[1], g.count_delta, 2, 8)
        a = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        rad = R * (0.7 + 0.18 * np.sin(lobes * a + rng.uniform(0, 6.28)) + 0.05 * np.sin(2 * lobes * a))
        _fill(L.body, c + np.stack([np.cos(a) * rad, np.sin(a) * rad * (0.7 + 0.3 * s[2])], 1))
    else:
        t = np.linspace(0, 1, 20)  # 0 at the base, 1 at the rim
        w_base, w_top = R * (0.12 + 0.25 * s[1]), R * (0.3 + 0.55 * s[2])
        half = w_base + (w_top - w_base) * t ** (0.6 + 1.2 * s[3]) + R * 0.2 * s[4] * np.sin(np.pi * t)
        half = np.minimum(half, R * 0.9)
        height = R * (1.3 + 0.5 * s[5])
        y = c[1] + height / 2 - height * t
        _fill(L.body, np.concatenate([np.stack([c[0] - half, y], 1), np.stack([c[0] + half, y], 1)[::-1]]))
        _ellipse(L.dark, (c[0], y[-1]), (half[-1] * 0.8, max(half[-1] * 0.22, 1.5)))
        _ellipse(L.acc, (c[0], y[-1]), (half[-1], max(half[-1] * 0.3, 1.5)), thickness=max(1, int(R * 0.04)))
    n_holes = _count(6 * s[6], g.count_delta, 0, 8)
    for _ in range(n_holes):
        _circle(L.dark, c + rng.uniform(-0.4, 0.4, 2) * R, R * (0.04 + 0.05 * s[7]))


def _draw_branching(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    base = c + np.array([0.0, R * 0.95])
    thick = R * (0.03 + 0.07 * s[3])
    polyp = max(1.5, R * (0.025 + 0.03 * s[7]))
    if s[0] > 0.5:  # pinnate: a straight stalk with side branches (sea pens)
        stalk = _curve(base, -np.pi / 2 + rng.normal(0, 0.1), 1.9 * R, (s[4] - 0.5) * 0.8, n=16)
        _limb(L.body, stalk, np.full(len(stalk), thick * 1.6))
        n_side = _count(5 + 7 * s[1], g.count_delta, 3, 14)
        angle = 0.6 + 0.7 * s[2]
        for k, i in enumerate(np.linspace(4, 15, n_side).astype(int)):
            side = 1 if k % 2 else -1
            heading = np.arctan2(*(stalk[i] - stalk[i - 1])[::-1])
            length = R * (0.25 + 0.35 * s[5]) * (1.15 - 0.5 * i / 16)
            branch = _curve(stalk[i], heading + side * angle, length, -side * 0.4 * s[6], n=6)
            _limb(L.body, branch, np.linspace(thick * 1.2, thick * 0.5, 6))
            _circle(L.sec, branch[-1], polyp)
    else:  # dichotomous tree (gorgonians, bamboo corals)
        depth = 3 + (s[1] > 0.5)
        spread = 0.3 + 0.5 * s[2]
        ratio = 0.55 + 0.2 * s[5]
        length = R * 1.9 * (1 - ratio) / (1 - ratio ** (depth + 1))
        stack = [(base, -np.pi / 2, length, thick * 1.5, 0)]
        while stack:
            p, a, ln, th, d = stack.pop()
            seg = _curve(p, a, ln, rng.normal(0, 0.2), n=4)
            _polyline(L.body, seg, th)
            if d < depth:
                for side in (-1, 1):
                    turn = side * spread * rng.uniform(0.7, 1.3)
                    stack.append((seg[-1], a + turn, ln * ratio, max(th * 0.7, 1), d + 1))
            else:
                _circle(L.sec, seg[-1], polyp)
            if s[6] > 0.55:  # polyps along the branches too
                _circle(L.sec, seg[len(seg) // 2], polyp * 0.8)


def _draw_anemone(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    col_h = R * (0.2 + 0.7 * s[4])
    base_y = c[1] + R * 0.95
    top_y = base_y - col_h
    wb, wt = R * (0.25 + 0.3 * s[5]), R * (0.3 + 0.35 * s[6])
    _fill(L.body, [(c[0] - wb, base_y), (c[0] + wb, base_y), (c[0] + wt, top_y), (c[0] - wt, top_y)])
    n_t = _count(9 + 14 * s[1], 2 * g.count_delta, 5, 28)
    t_len = min(R * (0.35 + 0.5 * s[2]), top_y - (c[1] - R) + wt * 0.3)
    t_w = max(1.5, R * (0.02 + 0.06 * s[3]))
    for a in np.linspace(-np.pi + 0.25, -0.25, n_t) + rng.normal(0, 0.05, n_t):
        start = np.array([c[0] + np.cos(a) * wt * 0.8, top_y])
        pts = _curve(start, a, t_len * rng.uniform(0.75, 1.0), 0, 0.08 * s[0], 1.5, rng.uniform(0, 6.28), n=8)
        _limb(L.sec, pts, np.linspace(t_w, t_w * 0.5, 8))
        _circle(L.acc, pts[-1], t_w * 0.7)
    _ellipse(L.body, (c[0], top_y), (wt, max(wt * 0.3, 2)))
    _ellipse(L.dark, (c[0], top_y), (wt * 0.35, max(wt * 0.1, 1)))


def _draw_bell(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    half_w = R * (0.45 + 0.35 * s[1])
    height = R * (0.4 + 0.5 * s[2])
    rim_y = c[1] - R * 0.95 + height
    a = np.linspace(np.pi, 2 * np.pi, 30)
    dome = np.stack([c[0] + np.cos(a) * half_w, rim_y + np.sin(a) * height], 1)
    n_t = _count(6 + 10 * s[3], 2 * g.count_delta, 4, 20)
    t_len = (c[1] + R - rim_y) * (0.5 + 0.5 * s[4])
    for x in np.linspace(-half_w * 0.9, half_w * 0.9, n_t):
        pts = _curve((c[0] + x, rim_y), np.pi / 2 + rng.normal(0, 0.1), t_len * rng.uniform(0.7, 1.0), 0,
                     0.08, 1.0 + s[5], rng.uniform(0, 6.28), n=8)
        _polyline(L.sec, pts, max(1, R * 0.02))
    _fill(L.body, dome)
    n_canals = 4 if s[5] < 0.5 else 8
    for x in np.linspace(-half_w * 0.7, half_w * 0.7, n_canals):
        _polyline(L.sec, [(c[0] + x * 0.3, rim_y - height * 0.85), (c[0] + x, rim_y)], max(1, R * 0.025))
    _ellipse(L.acc, (c[0], rim_y - height * 0.3), (half_w * (0.12 + 0.15 * s[6]), height * 0.35))


def _draw_fish(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    t = np.linspace(0, 1, 20)
    pts = _curve((c[0] - R * 0.7, c[1]), 0.0, R * 1.6, (s[0] - 0.5) * 0.3, n=20)
    depth = R * (0.28 + 0.5 * s[1])
    widths = depth * np.sin(np.pi * (0.08 + 0.88 * t ** (0.7 + 0.6 * s[7]))) ** 0.8 + 1.0
    tail_len = R * (0.2 + 0.15 * s[2])
    fork = 0.2 + 0.7 * s[3]
    tail_root = pts[0]
    top = tail_root + np.array([-tail_len, -depth * 0.45])
    bottom = tail_root + np.array([-tail_len, depth * 0.45])
    notch = tail_root + np.array([-tail_len * (1 - fork), 0.0])
    _fill(L.sec, [tail_root + (2, 0), top, notch, bottom])
    fin_h = R * (0.08 + 0.22 * s[4])
    i0, i1 = 5, 14
    top_line = pts[i0:i1] - np.stack([np.zeros(i1 - i0), widths[i0:i1] / 2 - 1], 1)
    fin_profile = np.where(np.arange(i1 - i0) % 2, 1.0, 0.55) if s[5] > 0.5 else np.ones(i1 - i0)  # spiny or smooth
    spikes = top_line - np.array([0.0, fin_h]) * fin_profile[:, None]
    _fill(L.sec, np.concatenate([top_line, spikes[::-1]]))
    _limb(L.body, pts, widths)
    _ellipse(L.sec, pts[13] + np.array([-depth * 0.1, depth * 0.1]), (depth * 0.35, depth * 0.12), 20)
    _circle(L.acc, pts[17] + np.array([0.0, -depth * 0.12]), max(1.5, depth * (0.1 + 0.1 * s[6])))


def _draw_tube(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    pts = _curve(c - np.array([R * 0.9, 0.0]), rng.normal(0, 0.15), 1.6 * R, (s[0] - 0.5) * 1.8, n=16)
    width = R * (0.12 + 0.3 * s[1])
    _limb(L.body, pts, np.full(len(pts), width))
    if s[2] > 0.35:  # crown of filaments at the head end
        n_f = _count(6 + 12 * s[3], 2 * g.count_delta, 4, 22)
        heading = np.arctan2(*(pts[-1] - pts[-2])[::-1])
        spread = 0.5 + 0.9 * s[5]
        for a in np.linspace(-spread, spread, n_f):
            f = _curve(pts[-1], heading + a, R * (0.25 + 0.45 * s[4]) * rng.uniform(0.8, 1.0), 0, 0.1 * s[6], 1.0,
                       rng.uniform(0, 6.28), n=6)
            _polyline(L.sec, f, max(1, R * 0.025))
            _circle(L.acc, f[-1], max(1.2, R * 0.025))
    else:  # tubercles all over (pyrosomes)
        for i in np.linspace(1, 14, _count(8 + 10 * s[3], g.count_delta, 4, 20)).astype(int):
            _circle(L.acc, pts[i] + rng.normal(0, width * 0.25, 2), max(1.2, width * 0.12))


def _draw_crustacean(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    elong = s[0]
    cara = c + np.array([R * 0.25 * elong, 0.0])
    ax = (R * (0.32 + 0.1 * (1 - elong)), R * (0.22 + 0.16 * (1 - elong)))
    leg_len = R * (0.35 + 0.5 * s[3]) * (1.25 - 0.5 * elong)
    leg_w = max(1.5, R * (0.025 + 0.02 * s[7]))
    n_pairs = 4 + (s[2] > 0.5)
    for k in range(n_pairs):
        x = cara[0] + ax[0] * (0.5 - k / max(n_pairs - 1, 1)) * 0.9
        for side in (-1, 1):
            p0 = np.array([x, cara[1] + side * ax[1] * 0.7])
            a = side * (np.pi / 2 + (k - n_pairs / 2) * 0.25)
            knee = p0 + leg_len * 0.5 * np.array([np.cos(a), np.sin(a)])
            foot = knee + leg_len * 0.55 * np.array([np.cos(a - side * 0.7), np.sin(a - side * 0.7)])
            _polyline(L.sec, [p0, knee, foot], leg_w)
    if elong > 0.35:  # abdomen segments and tail fan (shrimp-like)
        n_seg = _count(4 + 2 * s[1], g.count_delta, 3, 7)
        seg = _curve(cara - np.array([ax[0] * 0.8, 0.0]), np.pi, R * (0.5 + 0.5 * elong), -(s[1] - 0.3) * 1.5,
                     n=n_seg + 1)
        for i, p in enumerate(seg[:-1]):
            _circle(L.body, p, ax[1] * (1.0 - 0.6 * i / n_seg))
        _fill(L.sec, [seg[-2], seg[-1] + (0, -ax[1] * 0.8), seg[-1] + (0, ax[1] * 0.8)])
    _ellipse(L.body, cara, ax)
    if s[4] > 0.4:  # claws
        for side in (-1, 1):
            p0 = cara + np.array([ax[0] * 0.8, side * ax[1] * 0.5])
            tip = p0 + np.array([R * 0.35, side * R * 0.15])
            _polyline(L.body, [p0, tip], leg_w * 1.5)
            _ellipse(L.body, tip, (R * (0.08 + 0.08 * s[6]), R * 0.05), np.degrees(side * 0.4))
    ant_len = R * (0.25 + 0.75 * s[5])
    for side in (-1, 1):
        start = cara + np.array([ax[0] * 0.95, side * ax[1] * 0.3])
        _polyline(L.sec, _curve(start, side * 0.3, ant_len, -side * 0.8 * s[6], n=8), max(1, leg_w * 0.6))
        _circle(L.acc, start, max(1.5, R * 0.04))
    if s[6] > 0.6:  # spiny carapace
        for _ in range(6 + int(6 * s[7])):
            _circle(L.acc, cara + rng.uniform(-0.6, 0.6, 2) * ax, max(1, R * 0.025))


def _draw_shell(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    hinge = c + np.array([0.0, R * 0.6])
    if s[0] > 0.45:  # scallop fan with ribs
        a = np.linspace(-np.pi + 0.35, -0.35, 30)
        outline = hinge + np.stack([np.cos(a) * R * 0.95, np.sin(a) * R * (1.2 + 0.3 * s[2])], 1)
        _fill(L.body, np.concatenate([[hinge], outline]))
        if s[2] > 0.5:  # ears at the hinge
            _fill(L.sec, hinge + np.array([(-0.35, 0), (0.35, 0), (0.3, -0.22), (-0.3, -0.22)]) * R)
        ends = outline[1:-1]
    else:  # oval clam
        _ellipse(L.body, c, (R * 0.95, R * (0.5 + 0.25 * s[2])))
        hinge = c + np.array([-R * 0.3, -R * (0.45 + 0.25 * s[2])])
        a = np.linspace(0.2, np.pi - 0.2, 30)
        ends = c + np.stack([np.cos(a) * R * 0.9, np.sin(a) * R * (0.45 + 0.25 * s[2])], 1)
    n_ribs = _count(6 + 10 * s[1], 2 * g.count_delta, 3, 20)
    for e in ends[np.linspace(0, len(ends) - 1, n_ribs).astype(int)]:
        _polyline(L.sec, [hinge + (e - hinge) * 0.15, e], max(1, R * (0.015 + 0.02 * s[3])))
    _circle(L.acc, hinge, max(1.5, R * 0.06))


def _draw_snail(L: _Layers, g: Genes, rng):
    s, R, c = g.shape, L.r, L.c
    _ellipse(L.sec, c + np.array([0.0, R * 0.55]), (R * 0.9, R * (0.15 + 0.1 * s[4])))  # foot
    n_whorls = _count(3 + 2 * s[1], g.count_delta, 2, 6)
    r0 = R * (0.5 + 0.15 * s[2])
    tight = 0.65 + 0.15 * s[3]
    for k in range(n_whorls):
        rad = r0 * tight ** k
        a = k * 1.9
        p = c + np.array([0.0, R * 0.05]) + (r0 - rad) * np.array([np.cos(a), -0.6 - 0.4 * np.abs(np.sin(a))])
        _circle(L.body, p, rad)
        _ring(L.sec, p, rad, max(1, R * 0.03))
    _ellipse(L.dark, c + np.array([r0 * 0.55, R * 0.3]), (r0 * 0.35, r0 * 0.25))
    _circle(L.acc, c + np.array([R * 0.85, R * 0.45]), max(1.5, R * 0.05))


DRAWERS = {
    "star": _draw_star, "cucumber": _draw_cucumber, "urchin": _draw_urchin, "vase": _draw_vase,
    "branching": _draw_branching, "anemone": _draw_anemone, "bell": _draw_bell, "fish": _draw_fish,
    "tube": _draw_tube, "crustacean": _draw_crustacean, "shell": _draw_shell, "snail": _draw_snail,
    "octopus": _draw_octopus,
}
PLANS = tuple(DRAWERS)


# ---------------------------------------------------------------- texture and sprite

def texture_pattern(g: Genes, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n) float32 in [0, 1]: where the body shows the secondary colour instead of the base."""
    f = g.tex_freq
    if g.texture == "plain":
        return np.zeros((n, n), np.float32)
    if g.texture == "spots":
        out = np.zeros((n, n), np.uint8)
        for _ in range(int(4 + 22 * g.spot_density)):
            _circle(out, rng.uniform(0.1, 0.9, 2) * n, n * (0.02 + 0.05 * (1 - g.spot_density)))
        return out.astype(np.float32) / 255.0
    if g.texture in ("speckle", "mottled"):
        cells = int(np.clip(f * (3.0 if g.texture == "speckle" else 0.8), 2, n // 2))
        small = rng.random((cells, cells)).astype(np.float32)
        big = cv2.resize(small, (n, n), interpolation=cv2.INTER_CUBIC)
        return np.clip((big - 0.5) * 2.5 + 0.5, 0, 1)
    coords = (np.arange(n, dtype=np.float32) / n) - 0.5
    phase = rng.uniform(0, 2 * np.pi)
    if g.texture == "bands":
        wave = np.sin(2 * np.pi * f * coords + phase)[None, :].repeat(n, 0)
    elif g.texture == "stripes":
        wave = np.sin(2 * np.pi * f * coords + phase)[:, None].repeat(n, 1)
    elif g.texture == "rings":
        wave = np.sin(2 * np.pi * f * np.hypot(coords[None, :], coords[:, None]) + phase)
    else:  # gradient: dark at one end
        return np.clip(np.linspace(0, 1, n, dtype=np.float32)[None, :].repeat(n, 0) * 1.2 - 0.1, 0, 1)
    return np.clip(wave * 1.8 * 0.5 + 0.5, 0, 1).astype(np.float32)


def draw_sprite(g: Genes, size: float, angle_deg: float, rng: np.random.Generator,
                flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Draw one individual whose longest extent is about `size` px, rotated by `angle_deg`.

    Returns (bgr float32 (S, S, 3) in 0..255, alpha float32 (S, S) in 0..1) with S about size/0.88+2."""
    out = int(np.ceil(size / 0.88)) + 2
    n = out * SUPERSAMPLE
    layers = _Layers(*(np.zeros((n, n), np.uint8) for _ in range(4)), n=n)
    DRAWERS[g.plan](layers, g, rng)
    tex = texture_pattern(g, n, rng)[..., None] * g.tex_contrast
    body = hsv_to_bgr(g.body_hsv)
    colour = body * (1 - tex) + hsv_to_bgr(g.sec_hsv) * tex
    for mask, bgr in ((layers.sec, hsv_to_bgr(g.sec_hsv)), (layers.acc, hsv_to_bgr(g.acc_hsv))):
        a = mask.astype(np.float32)[..., None] / 255.0
        colour = colour * (1 - a) + bgr * a
    colour *= 1.0 - 0.65 * layers.dark.astype(np.float32)[..., None] / 255.0
    # Soft directional shading gives the animal some volume.
    ramp = np.linspace(-1, 1, n, dtype=np.float32)
    light = rng.uniform(0, 2 * np.pi)
    colour *= (1.0 + 0.18 * (np.cos(light) * ramp[None, :] + np.sin(light) * ramp[:, None]))[..., None]
    alpha = np.maximum(np.maximum(layers.body, layers.sec), layers.acc).astype(np.float32) / 255.0
    stack = np.concatenate([colour, alpha[..., None]], 2)
    if flip:
        stack = stack[:, ::-1]
    stack = cv2.resize(stack, (out, out), interpolation=cv2.INTER_AREA)
    return rotate_sprite(stack[..., :3], stack[..., 3], angle_deg)


def rotate_sprite(bgr: np.ndarray, alpha: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a sprite about its centre (drawings stay inside the inscribed circle, so nothing is cut)."""
    out = alpha.shape[0]
    stack = np.concatenate([bgr, alpha[..., None]], 2)
    M = cv2.getRotationMatrix2D(((out - 1) / 2, (out - 1) / 2), float(angle_deg), 1.0)
    stack = cv2.warpAffine(stack, M, (out, out), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    return stack[..., :3], np.clip(stack[..., 3], 0, 1)
