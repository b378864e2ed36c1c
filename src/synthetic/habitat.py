"""Where each concept lives, and the scene a frame of its taxa shows: the context of the generated benchmark.

`habitats.csv` (next to this file) gives every one of the 79 concepts a habitat profile from its biology:
the biotopes it lives in, best first (BIOTOPES: the open water column; a sea-pen field on shelf and slope
mud; bare slope mud; abyssal ooze; rock; a coral garden on rock; a sponge ground; a cold seep), its depth
range in metres, its mode of life (sessile, crawling, swimming near the bottom, pelagic), optional
associates, and the source of the entry (WoRMS, FishBase / SeaLifeBase, the MBARI Deep-Sea Guide,
literature; ranges are approximate, the taxon's usual range). Biotopes rather than bare substrates because
deep-sea communities are: a soft bottom on the shelf is a sea-pen field, on the slope the mud of crabs,
rockfish and sea cucumbers, on the abyssal plain the ooze of sea pigs; a rock is bare or a coral garden.
A frame's habitat (biotope x depth zone) is drawn from the profiles of ALL its taxa, the same way in train
and test: P(habitat) is proportional to the product over the frame's taxa of their affinity for the
biotope and their depth range's overlap with the zone. Habitat thus tells the phylum coarsely (ecology
follows the phylogeny: corals in gardens, glass sponges on sponge grounds, sea cucumbers on ooze, fish
and medusae in open water) and the concept hardly: several concepts share every habitat.

Each biotope has its own look (`render_background`), strong enough to be told from a thumbnail as a
diver tells it at a glance: slope mud is grey-olive and riddled with burrows, tracks and mounds; a sea-pen
field is the light tan sand of the shelf under a dense stand of cream, orange and white sea pens; abyssal
ooze is pale and even with dark nodules and long tracks; a cold seep is dark with white and yellow
bacterial mats and clam shells; rock is dark, blocky and cracked; a coral garden is the same rock crowded
with pink, orange, white, yellow and red fans and bushes; a sponge ground is grey rubble of dead skeletons
with pale living vases and barrels standing on it; the water column has no floor and more marine snow.
Water colour goes from blue-green on the shelf to dark navy in the deep, particles from many (shelf
plankton) to few.

Frames also hold animals nobody boxed (`community`): aggregations of the frame's own taxa (sea-pen fields,
sponge grounds, brittle-star beds, herds of sea pigs; a few of them beside the boxed animal and about its
size) and other members of the habitat's community, small and far away, as in real video frames whose
annotations are incomplete.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

HABITAT_CSV = Path(__file__).with_name("habitats.csv")
BIOTOPES = ("water", "seapen", "mud", "ooze", "rock", "garden", "sponge", "seep")
# The bottom each biotope is drawn on (its base colour and texture; the biotope adds its structures).
BIOTOPE_SUBSTRATE = {"water": "water", "seapen": "soft", "mud": "soft", "ooze": "soft", "seep": "soft",
                     "rock": "hard", "garden": "hard", "sponge": "biogenic"}
MODES = ("sessile", "crawling", "swimming", "pelagic")
ZONES = (("shelf", 0.0, 200.0), ("upper slope", 200.0, 800.0), ("mid slope", 800.0, 2000.0),
         ("deep", 2000.0, 6000.0))
BIOTOPE_AFFINITY = (1.0, 0.35, 0.2)  # affinity of a taxon for its 1st, 2nd, 3rd listed biotope
UNLISTED_AFFINITY = 0.03  # ... for a biotope it is not listed in (a stray individual)
ZONE_FLOOR = 0.03  # ... for a depth zone outside its range
HABITAT_SHARPNESS = 2.0  # P(habitat) ~ (product of the taxa's affinities) ** sharpness: frames show typical habitats
BENTHIC_SWIMMER_ON_FLOOR = 0.7  # share of near-bottom swimmers (fish, shrimps) resting on the seafloor
SNOW_BY_ZONE = (1.6, 1.2, 1.0, 0.7)  # marine snow / plankton density relative to the style's


@dataclass(frozen=True)
class Profiles:
    """Habitat profiles of the concepts in taxonomy order: affinity (C, 8 biotopes), zone overlap (C, 4
    zones), depth range (C, 2) metres and mode index (C,)."""

    biotope: np.ndarray
    zone: np.ndarray
    depth: np.ndarray
    mode: np.ndarray
    community: np.ndarray  # (C, biotopes, zones): P(habitat | concept alone), the habitat's community


@dataclass(frozen=True)
class Habitat:
    """One frame's scene: biotope, depth zone and depth (metres)."""

    biotope: str
    zone: int
    depth_m: float

    @property
    def substrate(self) -> str:
        """The bottom it is drawn on: soft, hard, biogenic or water (no floor)."""
        return BIOTOPE_SUBSTRATE[self.biotope]

    @property
    def depth01(self) -> float:
        """Depth on a log scale, 0 at the surface and 1 at 6,000 m (water tint)."""
        return float(np.clip(np.log1p(self.depth_m / 20.0) / np.log1p(6000.0 / 20.0), 0.0, 1.0))

    @property
    def seafloor(self) -> bool:
        return self.biotope != "water"


def load_habitats(path: str | Path = HABITAT_CSV) -> pd.DataFrame:
    """The habitat table, checked: every row's biotopes, depth range and mode are valid."""
    table = pd.read_csv(path, dtype={"associates": str}, keep_default_na=False)
    for row in table.itertuples():
        kinds = row.biotopes.split(";")
        if not kinds or any(b not in BIOTOPES for b in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"{path}: {row.concept}: bad biotopes {row.biotopes!r} (valid: {', '.join(BIOTOPES)})")
        if not 0 <= float(row.depth_min) < float(row.depth_max) <= 11000:
            raise ValueError(f"{path}: {row.concept}: bad depth range {row.depth_min}-{row.depth_max}")
        if row.mode not in MODES:
            raise ValueError(f"{path}: {row.concept}: bad mode {row.mode!r}")
        if not str(row.source).strip():
            raise ValueError(f"{path}: {row.concept}: no source")
    if not table["concept"].is_unique:
        raise ValueError(f"{path}: a concept is listed twice")
    return table


def _log_depth(d):
    return np.log1p(np.asarray(d, np.float64) / 20.0)


@lru_cache(maxsize=4)
def concept_profiles(names: tuple[str, ...], path: str = str(HABITAT_CSV)) -> Profiles:
    """Profiles of `names` (taxonomy order); a concept missing from the table is an error."""
    table = load_habitats(path).set_index("concept")
    missing = [n for n in names if n not in table.index]
    if missing:
        raise KeyError(f"{path} has no habitat for {missing}")
    biotope = np.full((len(names), len(BIOTOPES)), UNLISTED_AFFINITY)
    zone = np.empty((len(names), len(ZONES)))
    depth = np.empty((len(names), 2))
    mode = np.empty(len(names), np.int64)
    for i, name in enumerate(names):
        row = table.loc[name]
        for rank, b in enumerate(row["biotopes"].split(";")):
            biotope[i, BIOTOPES.index(b)] = BIOTOPE_AFFINITY[min(rank, len(BIOTOPE_AFFINITY) - 1)]
        depth[i] = float(row["depth_min"]), float(row["depth_max"])
        lo, hi = _log_depth(depth[i])
        for z, (_, zlo, zhi) in enumerate(ZONES):  # share of the zone (log depth) inside the taxon's range
            a, b = _log_depth([zlo, zhi])
            zone[i, z] = max(0.0, min(hi, b) - max(lo, a)) / (b - a)
        mode[i] = MODES.index(row["mode"])
    zone = np.maximum(zone, ZONE_FLOOR)
    community = biotope[:, :, None] * zone[:, None, :]
    return Profiles(biotope, zone, depth, mode, community / community.sum((1, 2), keepdims=True))


def habitat_probabilities(taxa, profiles: Profiles) -> np.ndarray:
    """(biotopes, zones) P(habitat | the frame's distinct taxa): the product of every taxon's affinities
    (sharpened by HABITAT_SHARPNESS)."""
    taxa = np.unique(np.asarray(taxa, np.int64))
    log_p = np.log(profiles.biotope[taxa]).sum(0)[:, None] + np.log(profiles.zone[taxa]).sum(0)[None, :]
    p = np.exp(HABITAT_SHARPNESS * (log_p - log_p.max()))
    return p / p.sum()


def choose_habitat(taxa, profiles: Profiles, rng: np.random.Generator) -> Habitat:
    """A frame's habitat drawn from its taxa's profiles, and a depth inside the zone (and inside the taxa's
    common depth range where they have one)."""
    p = habitat_probabilities(taxa, profiles)
    k = int(rng.choice(p.size, p=p.ravel()))
    s, z = divmod(k, len(ZONES))
    taxa = np.unique(np.asarray(taxa, np.int64))
    lo, hi = max(ZONES[z][1], profiles.depth[taxa, 0].max()), min(ZONES[z][2], profiles.depth[taxa, 1].min())
    if lo >= hi:
        lo, hi = ZONES[z][1], ZONES[z][2]
    a, b = _log_depth([lo, hi])
    depth = float(20.0 * np.expm1(rng.uniform(a, b)))
    return Habitat(BIOTOPES[s], z, depth)


def community(habitat: Habitat, profiles: Profiles) -> np.ndarray:
    """(C,) P(concept | habitat) with every concept equally common a priori: who else lives there."""
    p = profiles.community[:, BIOTOPES.index(habitat.biotope), habitat.zone]
    return p / p.sum()


def rests_on_floor(mode: int, habitat: Habitat, rng: np.random.Generator) -> bool:
    """Whether an individual of this mode lies or stands on the seafloor of the frame."""
    if not habitat.seafloor:
        return False
    name = MODES[mode]
    if name == "pelagic":
        return False
    if name == "swimming":
        return bool(rng.random() < BENTHIC_SWIMMER_ON_FLOOR)
    return True


# ---------------------------------------------------------------- drawing the scene

def water_colour(depth01: float) -> np.ndarray:
    """BGR water colour: blue-green and brighter when shallow, dark navy when deep."""
    shallow, deep = np.array([150.0, 135.0, 55.0]), np.array([72.0, 36.0, 10.0])
    return shallow + (deep - shallow) * depth01


def _smooth_noise(h: int, w: int, cells: int, rng) -> np.ndarray:
    small = rng.random((max(2, cells * h // max(w, 1)), cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


# Base colour (BGR) of each biotope's bottom, the contrast of its fine texture and its texture's cells.
BIOTOPE_LOOK = {
    "seapen": (np.array([118.0, 160.0, 185.0]), 0.08, 6),   # light tan sandy mud of the shelf
    "mud": (np.array([100.0, 112.0, 118.0]), 0.10, 6),      # grey-olive slope mud, bioturbated
    "ooze": (np.array([150.0, 160.0, 168.0]), 0.04, 4),     # pale, even abyssal ooze
    "seep": (np.array([62.0, 70.0, 78.0]), 0.12, 8),        # dark, sulphidic sediment
    "rock": (np.array([62.0, 70.0, 80.0]), 0.30, 18),       # dark basalt / mudstone, rough
    "garden": (np.array([66.0, 72.0, 78.0]), 0.30, 18),     # the same rock under its corals
    "sponge": (np.array([138.0, 138.0, 132.0]), 0.18, 14),  # cold grey rubble of skeletons and spicules
}
# Colours (BGR) of living octocoral colonies in a garden: pink, orange, white, yellow, red.
CORAL_COLOURS = np.array([[150.0, 120.0, 230.0], [60.0, 140.0, 230.0], [215.0, 222.0, 225.0],
                          [80.0, 200.0, 225.0], [60.0, 60.0, 200.0]])
# Sea pens and tube anemones of a sea-pen field: cream, orange-red, white.
SEAPEN_COLOURS = np.array([[175.0, 195.0, 225.0], [70.0, 110.0, 215.0], [220.0, 225.0, 230.0]])
# Living glass and demosponges of a sponge ground: white, cream, pale yellow.
SPONGE_COLOURS = np.array([[225.0, 230.0, 232.0], [185.0, 215.0, 228.0], [120.0, 205.0, 225.0]])
MAT_COLOURS = np.array([[230.0, 235.0, 235.0], [90.0, 200.0, 230.0]])  # bacterial mats: white, yellow


def _branching(floor: np.ndarray, x: float, y: float, length: float, colour, thickness: int, depth: int,
               rng) -> None:
    """A branching colony or skeleton standing at (x, y): a stalk that forks `depth` times."""
    stack = [((x, y), -np.pi / 2 + rng.normal(0, 0.15), length, 0)]
    while stack:
        (px, py), a, ln, d = stack.pop()
        qx, qy = px + np.cos(a) * ln, py + np.sin(a) * ln
        cv2.line(floor, (int(px), int(py)), (int(qx), int(qy)), colour, thickness, cv2.LINE_AA)
        if d < depth:
            stack += [((qx, qy), a + side * rng.uniform(0.3, 0.7), ln * 0.7, d + 1) for side in (-1, 1)]


def _vase(x: float, y: float, half: float, hgt: float, foot: float) -> np.ndarray:
    """Integer outline of a vase standing at (x, y): `half` its half-width at the rim, `foot` times that at
    the base."""
    return np.round(np.array([(x - half * foot, y), (x - half, y - hgt), (x + half, y - hgt),
                              (x + half * foot, y)])).astype(np.int32)


def _perspective(cy: float, horizon: float, height: int) -> float:
    return 0.3 + 0.7 * float(np.clip((cy - horizon) / max(height - horizon, 1.0), 0.0, 1.0))


def _floor_features(floor: np.ndarray, biotope: str, base: np.ndarray, horizon: float, top: int, rng) -> None:
    """Draw the biotope's structures on the floor rows (floor: the frame's rows from `top`, float32 BGR): its
    substrate's, then its own."""
    h, w = floor.shape[:2]
    height = top + h
    area = w * h / 1e4

    def point():
        cy = rng.uniform(max(horizon, top), height)
        return rng.uniform(0, w), cy, _perspective(cy, horizon, height)

    def colour(bgr):
        return tuple(float(v) for v in bgr)

    substrate = BIOTOPE_SUBSTRATE[biotope]
    if substrate == "soft":
        bioturbation = 3.0 if biotope == "mud" else 1.0  # slope mud is riddled with burrows and mounds
        for _ in range(int((rng.integers(2, 6) + 0.3 * area) * bioturbation)):  # burrow openings with a rim
            x, cy, s = point()
            ax = (max(1, int(rng.uniform(2, 5) * s * w / 400)), max(1, int(rng.uniform(1, 2.5) * s * w / 400)))
            cv2.ellipse(floor, (int(x), int(cy - top)), (ax[0] + 2, ax[1] + 1), 0, 0, 360,
                        colour(base * 1.08), -1, cv2.LINE_AA)
            cv2.ellipse(floor, (int(x), int(cy - top)), ax, 0, 0, 360, colour(base * 0.45), -1,
                        cv2.LINE_AA)
        for _ in range(int(rng.integers(1, 4))):  # tracks and trails of deposit feeders
            x, cy, s = point()
            n = 12
            heading = rng.uniform(0, 2 * np.pi)
            turn = np.cumsum(rng.normal(0, 0.25, n))
            step = rng.uniform(4, 10) * s * w / 400
            pts = np.stack([x + np.cumsum(np.cos(heading + turn)) * step,
                            cy - top + np.cumsum(np.sin(heading + turn)) * step * 0.4], 1)
            cv2.polylines(floor, [np.round(pts).astype(np.int32)], False, colour(base * 0.8),
                          max(1, int(2 * s * w / 400)), cv2.LINE_AA)
        for _ in range(int(rng.integers(1, 5) * bioturbation)):  # mounds with a shadow
            x, cy, s = point()
            ax = (max(2, int(rng.uniform(5, 12) * s * w / 400)), max(1, int(rng.uniform(2, 4) * s * w / 400)))
            cv2.ellipse(floor, (int(x), int(cy - top + ax[1] // 2 + 1)), ax, 0, 0, 360,
                        colour(base * 0.8), -1, cv2.LINE_AA)
            cv2.ellipse(floor, (int(x), int(cy - top)), ax, 0, 0, 360, colour(base * 1.12), -1,
                        cv2.LINE_AA)
    elif substrate == "hard":
        for _ in range(int(rng.integers(6, 14) + 0.5 * area)):  # boulders and blocks
            x, cy, s = point()
            r = rng.uniform(8, 30) * s * w / 400
            n = int(rng.integers(5, 8))
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = r * rng.uniform(0.6, 1.0, n)
            pts = np.stack([x + np.cos(a) * rad, cy - top + np.sin(a) * rad * 0.6], 1)
            shade = base * rng.uniform(0.6, 1.35)
            cv2.fillPoly(floor, [np.round(pts).astype(np.int32)], colour(shade), cv2.LINE_AA)
            lit = pts[pts[:, 1] < cy - top]
            if len(lit) >= 2:  # lit upper edge
                cv2.polylines(floor, [np.round(lit).astype(np.int32)], False,
                              colour(shade * 1.3), 1, cv2.LINE_AA)
        for _ in range(int(rng.integers(3, 8))):  # cracks
            x, cy, s = point()
            pts = np.stack([x + np.cumsum(rng.normal(0, 6, 6)) * s * w / 400,
                            cy - top + np.cumsum(rng.normal(2, 4, 6)) * s * w / 400], 1)
            cv2.polylines(floor, [np.round(pts).astype(np.int32)], False, colour(base * 0.3),
                          1, cv2.LINE_AA)
    else:  # biogenic: rubble of skeletons, dead coral and sponge structures
        pale = np.array([185.0, 192.0, 200.0])
        for _ in range(int(rng.integers(15, 30) + 1.5 * area)):  # fragments
            x, cy, s = point()
            ln = rng.uniform(3, 9) * s * w / 400
            a = rng.uniform(0, np.pi)
            p0 = (int(x), int(cy - top))
            p1 = (int(x + np.cos(a) * ln), int(cy - top + np.sin(a) * ln * 0.5))
            cv2.line(floor, p0, p1, colour(pale * rng.uniform(0.6, 1.0) * (0.5 + 0.5 * s)),
                     max(1, int(1.5 * s * w / 400)), cv2.LINE_AA)
        for _ in range(int(rng.integers(2, 6))):  # standing dead framework: stalks and vase outlines
            x, cy, s = point()
            hgt = rng.uniform(15, 45) * s * w / 400
            shade = colour(pale * rng.uniform(0.55, 0.8) * (0.5 + 0.5 * s))
            th = max(1, int(1.5 * s * w / 400))
            if rng.random() < 0.5:
                _branching(floor, x, cy - top, hgt * 0.5, shade, th, 2, rng)
            else:
                half = hgt * rng.uniform(0.2, 0.4)
                cv2.polylines(floor, [_vase(x, cy - top, half, hgt, 0.4)], False, shade, th, cv2.LINE_AA)

    if biotope == "seapen":  # a stand of sea pens and tube anemones: thin upright stalks with a plume
        for _ in range(int(rng.integers(40, 80) + 3 * area)):
            x, cy, s = point()
            hgt = rng.uniform(10, 30) * s * w / 400
            tip = (int(x + rng.normal(0, 0.15) * hgt), int(cy - top - hgt))
            pen = SEAPEN_COLOURS[rng.integers(len(SEAPEN_COLOURS))]
            shade = colour(pen * rng.uniform(0.7, 1.0) * (0.5 + 0.5 * s))
            cv2.line(floor, (int(x), int(cy - top)), tip, shade, max(1, int(s * w / 400)), cv2.LINE_AA)
            cv2.ellipse(floor, tip, (max(1, int(hgt * 0.15)), max(1, int(hgt * 0.35))), 0, 0, 360, shade, -1,
                        cv2.LINE_AA)
    elif biotope == "ooze":  # manganese nodules and the long trails of holothurians
        for _ in range(int(rng.integers(20, 50) + 2 * area)):
            x, cy, s = point()
            r = max(1, int(rng.uniform(1, 3) * s * w / 400))
            cv2.ellipse(floor, (int(x), int(cy - top)), (r + 1, r), 0, 0, 360, colour(base * 0.3), -1, cv2.LINE_AA)
    elif biotope == "seep":  # bacterial mats and beds of clam shells
        for _ in range(int(rng.integers(4, 8))):
            x, cy, s = point()
            mat = colour(MAT_COLOURS[rng.integers(len(MAT_COLOURS))] * rng.uniform(0.75, 1.0))
            for _ in range(int(rng.integers(6, 14))):  # a patch of overlapping blobs
                ax = (max(2, int(rng.uniform(8, 22) * s * w / 400)), max(1, int(rng.uniform(2, 6) * s * w / 400)))
                c = (int(x + rng.normal(0, 20) * s * w / 400), int(cy - top + rng.normal(0, 5) * s * w / 400))
                cv2.ellipse(floor, c, ax, float(rng.uniform(-15, 15)), 0, 360, mat, -1, cv2.LINE_AA)
            for _ in range(int(rng.integers(8, 25))):  # clam shells around it
                c = (int(x + rng.normal(0, 20) * s * w / 400), int(cy - top + rng.normal(0, 5) * s * w / 400))
                ax = (max(1, int(rng.uniform(2, 4) * s * w / 400)), max(1, int(rng.uniform(1, 2) * s * w / 400)))
                cv2.ellipse(floor, c, ax, float(rng.uniform(0, 180)), 0, 360, colour([200.0, 210.0, 215.0]), -1,
                            cv2.LINE_AA)
    elif biotope == "garden":  # living coral colonies standing on the rock: fans and bushes of colour
        for _ in range(int(rng.integers(15, 30) + 1.5 * area)):
            x, cy, s = point()
            shade = colour(CORAL_COLOURS[rng.integers(len(CORAL_COLOURS))] * rng.uniform(0.7, 1.0)
                           * (0.5 + 0.5 * s))
            _branching(floor, x, cy - top, rng.uniform(10, 28) * s * w / 400, shade,
                       max(1, int(2 * s * w / 400)), int(rng.integers(2, 4)), rng)
    elif biotope == "sponge":  # living sponges standing on the rubble: pale vases, barrels and mounds
        for _ in range(int(rng.integers(10, 20) + 0.6 * area)):
            x, cy, s = point()
            hgt = rng.uniform(8, 30) * s * w / 400
            half = hgt * rng.uniform(0.25, 0.6)
            shade = colour(SPONGE_COLOURS[rng.integers(len(SPONGE_COLOURS))] * rng.uniform(0.7, 1.0)
                           * (0.5 + 0.5 * s))
            cv2.fillPoly(floor, [_vase(x, cy - top, half, hgt, 0.5)], shade, cv2.LINE_AA)
            cv2.ellipse(floor, (int(x), int(cy - top - hgt)), (max(1, int(half)), max(1, int(half * 0.3))), 0, 0,
                        360, colour(np.asarray(shade) * 0.55), -1, cv2.LINE_AA)  # the dark osculum


def render_background(width: int, height: int, habitat: Habitat, rng,
                      max_horizon: float | None = None) -> tuple[np.ndarray, float]:
    """(frame float32 HxWx3 BGR, horizon y): open water, or the habitat's seafloor below a horizon (above
    `max_horizon` where given: the test's benthic animals sit on the floor; it may be above the frame's top:
    a camera looking down)."""
    water = water_colour(habitat.depth01) * rng.uniform(0.9, 1.1, 3)
    rows = np.linspace(1.25, 0.75, height, dtype=np.float32)[:, None, None]
    frame = (water * rows).astype(np.float32) * (0.9 + 0.2 * _smooth_noise(height, width, 4, rng))[..., None]
    if not habitat.seafloor:
        return frame, -1.0
    horizon = height * rng.uniform(0.05, 0.45)
    if max_horizon is not None:
        horizon = min(horizon, max_horizon)
    top = int(np.clip(np.ceil(horizon), 0, height - 1))
    colour, contrast, cells = BIOTOPE_LOOK[habitat.biotope]
    base = (colour * rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, 3)).astype(np.float32)
    rows_below = height - top
    texture = (1.0 - contrast + 2 * contrast * _smooth_noise(rows_below, width, cells, rng)
               + contrast * (rng.random((rows_below, width), np.float32) - 0.5))
    floor = np.ascontiguousarray(base * texture[..., None], np.float32)
    _floor_features(floor, habitat.biotope, base, horizon, top, rng)
    # Distance fog: the far seafloor fades into the water.
    y = np.arange(top, height, dtype=np.float32)
    fog = (0.25 + 0.75 * np.clip((y - horizon) / max(height - horizon, 1.0), 0, 1) ** 0.7)[:, None, None]
    frame[top:] = floor * fog + water.astype(np.float32) * (1 - fog)
    return frame, horizon


def habitat_bayes_accuracy(frames: list[np.ndarray], group: np.ndarray, profiles: Profiles) -> float:
    """Accuracy of the best guess of an animal's `group` (e.g. its phylum: group[c] for class c) from its
    frame's habitat alone, exactly, over `frames` (class indices of each frame's animals): the expected share
    right of answering argmax_g P(g | habitat) with P(habitat | frame) = habitat_probabilities. An upper bound
    of what any view of the context can tell (the generator draws nothing else from the habitat)."""
    group = np.asarray(group)
    levels = np.unique(group)
    p_habitat = [habitat_probabilities(f, profiles).ravel() for f in frames]
    joint = np.zeros((len(levels), p_habitat[0].size))  # P(group, habitat) up to a constant
    for f, p in zip(frames, p_habitat):
        np.add.at(joint, np.searchsorted(levels, group[f]), p)
    best = levels[joint.argmax(0)]  # the answer for each habitat
    right = sum(float((p[None, :] * (best[None, :] == group[f][:, None])).sum()) for f, p in zip(frames, p_habitat))
    return right / sum(len(f) for f in frames)
