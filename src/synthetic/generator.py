"""Generate a FathomNet-shaped benchmark in the real COCO format: the embedded default data set.

Real FathomNet images cannot be fetched offline, so tests, CI and the README's first command use this.
The structure is the real competition's (src/synthetic/skeleton.py): the train split replays real train
frames with their real label multisets, the test split the 325 real test frames with their real sizes
and box geometry, labels drawn with the real per-frame composition (mostly one taxon per frame) and
class-dependent sizes. The pixels are drawn (src/synthetic/shapes.py). It writes, under ROOT:
  frames/train/*.jpg, frames/test/*.jpg   underwater-looking frames
  dataset_train.json, dataset_test.json   COCO files like the competition's (test category_id null,
                                          coco_url = file:// URL of the frame)
  solution.csv                            annotation_id,concept_name for every test annotation
  frame_habitats.csv                      split,image_id,biotope,substrate,zone,depth_m,horizon of every frame (the
                                          scene's hidden variables; no model reads it)
  generator.json                          the generator's parameters (written last: complete)
Frames are drawn at `render_scale` times the real pixel size (default 0.5) and saved as JPEG. Test animals
are drawn at the real boxes (centre, long side, an orientation that fits the box's aspect) and boxed by
their tight box, as an annotator boxes an animal. The test split is shifted like the real one: train
objects are larger (by 1 + TRAIN_SIZE_GAIN x shift), test frames are blurrier (which costs a small animal
far more than a large one), more of them are bad (murky, dim, out of focus) or show atypical animals, the
lamp is another colour, and a few more test individuals look like a concept of another class.

Why models err here as they do on the real test (see bench/REALISM.md): deep-sea animals of unrelated
phyla share a few colours, so a small or degraded animal is mistaken for a look-alike of another
phylum; body plans and shapes follow the taxonomy, so a well-seen animal is mistaken, if at all, for a
relative; concepts named at class or phylum rank look like any of their members; a share of the
individuals look like another class's concept (every model fails on them). Difficulty belongs to the
frame too: animals of one taxon in a frame are one species seen alike, some frames show atypical
animals, and bad frames degrade all their animals at once, so errors cluster by frame. Each individual is
still blurred and hazed around its frame's level (and varies in size and pose), so the clearest of a
group is often clearer than the hardest.

Context carries what habitat carries (src/synthetic/habitat.py, habitats.csv): every concept has a
habitat profile from its biology (biotopes, depth range, mode of life, source named per entry); a
frame's biotope (open water, sea-pen field, slope mud, abyssal ooze, rock, coral garden, sponge ground, cold
seep) and depth zone are drawn from the profiles of ALL its taxa, the same way in train and test, and drawn
with their own bottoms and structures, water colour and particles. Sessile and crawling animals (and most
near-bottom swimmers) rest on the seafloor; in a test frame, whose boxes are real, the horizon is put above
every such box. Frames also hold animals nobody boxed: aggregations of their own taxa (more for sessile and
crawling ones), the first few of each boxed animal's taxon beside it and about its size (a patch of one
cohort, in its 3x window), the rest and other members of the habitat's community smaller and further away.
The context thus hints at the phylum (corals in coral gardens, glass sponges on sponge grounds, sea
cucumbers on ooze, fish and medusae in open water) but hardly at the concept. At the default render scale a
32-px 'frame' view is a 32x18 thumbnail: enough for the bottom's colour and the water's, not for its
texture; the 'ctx3' view of a box keeps the render's resolution up to boxes of about 11 px.

    python -m src.synthetic --out inputs/synthetic/demo --preset demo --seed 0 --preview preview.png \
        --context-preview docs/context_preview.png
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from src.artifacts import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from src.synthetic.habitat import (
    BIOTOPES,
    MODES,
    SNOW_BY_ZONE,
    ZONES,
    Habitat,
    Profiles,
    choose_habitat,
    community,
    concept_profiles,
    render_background,
    rests_on_floor,
    water_colour,
)
from src.synthetic.shapes import (
    UPRIGHT_PLANS,
    Appearance,
    Genes,
    concept_genes,
    draw_sprite,
    individual_look,
    instance_genes,
    sample_instance,
)
from src.synthetic.skeleton import Skeleton, load_skeleton
from src.taxonomy import Taxonomy, load_taxonomy


@dataclass(frozen=True)
class Preset:
    """How much of the real skeleton a preset replays: whole frames, sampled class-balanced."""

    train_rois: int | None  # None: every real train frame (23,699 ROIs)
    test_rois: int | None   # None: every real test frame (788 ROIs)
    about: str


PRESETS = {
    "tiny": Preset(240, 80, "about 240 train / 80 test ROIs, for tests"),
    "demo": Preset(4000, 400, "about 4,000 train / 400 test ROIs, the README's pipeline"),
    "bench": Preset(16000, None, "about 16,000 train ROIs / the 788 real test ROIs, for studies on a CPU"),
    "fathomnet": Preset(None, None, "all 23,699 train / 788 test ROIs of the real data set, for GPU runs"),
}
DEFAULT_SHIFT = 0.6
DEFAULT_RENDER_SCALE = 0.5
TRAIN_SIZE_GAIN = 0.35  # train objects are 1 + gain x shift times the test size: the real test is "smaller"
MIN_REL_SIZE, MAX_REL_SIZE = 0.006, 0.6  # object long side relative to the frame's long side
SHAPE_FIT_WEIGHT = 10.0  # how strongly test labels follow the shape of their boxes (log-likelihood weight)
SPLIT_CODE = {"train": 0, "test": 1}
GENERATOR_VERSION = 7
ATYPICAL_VARIATION = 2.5  # per-individual variation in an atypical frame, relative to the taxon's
SIBLING_VARIATION = 0.4  # variation of a taxon's siblings in one frame around the first one drawn
FRAME_BLUR_SHARE = 0.6  # share of a frame's blur level applied to the whole frame; the rest per individual
INDIVIDUAL_BLUR_SPREAD = 0.45  # log-normal spread of an individual's blur around its frame's level
# Unboxed animals: mean number per taxon of the frame by its mode of life (sessile, crawling, swimming, pelagic:
# sea-pen fields, sponge grounds, brittle-star beds and sea-pig herds aggregate), plus the habitat's community.
AGGREGATION = (5.0, 4.0, 1.5, 1.5)
NEIGHBOURS = (2, 4)  # of a boxed animal's taxon's unboxed individuals, this many (uniform) stand beside it
NEIGHBOUR_SIZE = (0.7, 1.1)  # ... with long sides this share of the boxed one's (one patch, one cohort)
NEIGHBOUR_REACH = 1.2  # ... centred within this many of its long sides from its centre (its 3x window)
COMMUNITY = 2.0  # mean number of unboxed animals of other taxa of the habitat
INDIVIDUAL_HAZE = 0.3  # largest haze (blend towards the water colour) of an individual, times 0.3 + badness
# Video frame grabs: JPEG at quality 95 is 6x smaller than PNG for these noisy frames, artefacts barely visible.
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


@dataclass(frozen=True)
class FrameStyle:
    """Imaging conditions of a split. Each frame draws a badness q in 0..1: a share `bad_frames` of the frames
    (murky water, a dim lamp, out of focus) draw it from U(0.6, 1), the others from Beta(*quality); the ranges
    below go from a good frame (q = 0) to a bad one (q = 1), so a bad frame is bad for all its animals."""

    quality: tuple[float, float]      # Beta parameters of the badness of ordinary frames
    bad_frames: float                 # share of bad frames
    blur: tuple[float, float]         # Gaussian sigma (px at the default render scale)
    noise: tuple[float, float]        # sensor noise sigma (0..255)
    turbidity: tuple[float, float]    # blend towards the water colour
    lamp_bgr: tuple[float, float, float]
    vignette: tuple[float, float]
    brightness: tuple[float, float]   # good frame -> bad frame
    snow: tuple[int, int]             # marine-snow particles per 100k px
    p_lookalike: float                # share of individuals that look like another class's concept
    atypical_frames: float = 0.0      # share of frames whose animals are atypical (odd pose, partly hidden)


def split_style(split: str, shift: float) -> FrameStyle:
    """Train style, or the test style at shift strength `shift` (0: same conditions as train)."""
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be in 0..1, got {shift}")
    s = shift if split == "test" else 0.0
    return FrameStyle(
        quality=(1.2, 6.0 - 2.0 * s),
        bad_frames=0.08 + 0.25 * s,
        blur=(0.3 + 0.67 * s, 0.9 + 1.5 * s),
        noise=(1.0 + 0.5 * s, 5.0 + 1.5 * s),
        turbidity=(0.03 + 0.03 * s, 0.3 + 0.08 * s),
        lamp_bgr=(1.0 - 0.06 * s, 1.0 - 0.01 * s, 1.0 + 0.06 * s),
        vignette=(0.15 + 0.1 * s, 0.45 + 0.15 * s),
        brightness=(1.1 - 0.05 * s, 0.7 - 0.1 * s),
        snow=(10 + int(10 * s), 60 + int(40 * s)),
        p_lookalike=0.02 + 0.02 * s,
        atypical_frames=0.03 + 0.2 * s,
    )


@dataclass
class FramePlan:
    """One frame to draw: its size (rendered px), class per object, and either fixed boxes (test: the real
    geometry, xywh) or target long sides (train: the renderer places the animals)."""

    width: int
    height: int
    labels: np.ndarray
    boxes: np.ndarray | None = None
    sizes: np.ndarray | None = None


# ---------------------------------------------------------------- the skeleton: frames, labels, sizes

def class_size_model(skeleton: Skeleton, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of log(long side / frame long side) per class, from the real test quartiles."""
    sizes = skeleton.class_sizes.reindex(range(n_classes))
    mu = np.log(sizes["rel_median"].to_numpy(np.float64))
    sigma = (np.log(sizes["rel_q75"]) - np.log(sizes["rel_q25"])).to_numpy(np.float64) / 1.349
    return mu, np.clip(sigma, 0.3, 1.2)


def cooccurrence(multisets: list[np.ndarray], n_classes: int, smoothing: float = 0.5) -> np.ndarray:
    """K[c, c'] = P(c' also in the frame | c in the frame, c' != c), row-normalised, from frames holding
    two or more taxa."""
    counts = np.full((n_classes, n_classes), smoothing / n_classes)
    for labels in multisets:
        present = np.unique(labels)
        if len(present) > 1:
            counts[np.ix_(present, present)] += 1.0
    np.fill_diagonal(counts, 0.0)
    return counts / counts.sum(1, keepdims=True)


def rotated_extents(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Width and height (px) of the tight box of pixels at centred coordinates x, y (1, P) once rotated by
    each angle of theta (A, 1) radians."""
    return (np.ptp(x * np.cos(theta) + y * np.sin(theta), axis=1) + 1,
            np.ptp(-x * np.sin(theta) + y * np.cos(theta), axis=1) + 1)


def class_extents(genes: list[Genes], rng: np.random.Generator, instances: int = 6,
                  angles: int = 16) -> np.ndarray:
    """(C, instances, angles, 2) tight-box width and height of drawn individuals of each class at evenly
    spaced rotations, relative to their longest extent: the boxes each class's silhouette can fill."""
    theta = np.deg2rad(np.arange(angles) * 180.0 / angles)[:, None]  # a box is the same at theta + 180
    out = np.empty((len(genes), instances, angles, 2))
    for c in range(len(genes)):
        for k in range(instances):
            _, alpha = draw_sprite(instance_genes(genes, c, rng), 40.0, 0.0, rng)
            ys, xs = np.nonzero(alpha > 0.2)
            out[c, k, :, 0], out[c, k, :, 1] = rotated_extents(xs[None] - xs.mean(), ys[None] - ys.mean(), theta)
            out[c, k] /= out[c, k].max()
    return out


def box_fit(extents: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """(N, C) how fully an individual of each class can fill each w x h box at its best rotation: the
    largest min(w / width, h / height) over rotations with both relative to the long side (1: it fills the
    box), averaged over the drawn individuals."""
    box = wh / wh.max(axis=1, keepdims=True)
    ratio = np.minimum(box[:, None, None, None, 0] / extents[None, ..., 0],
                       box[:, None, None, None, 1] / extents[None, ..., 1])
    return np.clip(ratio.max(axis=3), 0, 1).mean(axis=2)


def assign_test_labels(skeleton: Skeleton, n_classes: int, rng: np.random.Generator, fit: np.ndarray | None = None,
                       sweeps: int = 20, sharpness: float = 1.0) -> list[np.ndarray]:
    """Class per ROI of every real test frame (frame order, ROIs in annotation order).

    Each frame draws a composition pattern seen in real frames with as many ROIs (e.g. "2+1"); boxes of
    similar size form one taxon's group. A first pass gives every group a taxon with weight (quota left
    after it) x (likelihood of its box sizes under the class's real size distribution) x (co-occurrence
    with the frame's first taxon in real train frames), large frames first while every quota is open.
    Metropolis swaps of the taxa of two equal-size groups then sample the assignment from the size
    likelihood at fixed class counts, so classes stay about equally frequent with their real sizes.
    `fit` (N, C), from `box_fit`, adds how well each class's silhouette fills each box (an urchin is not
    put in a long thin box)."""
    geometry = skeleton.test_geometry
    mu, sigma = class_size_model(skeleton, n_classes)
    K = cooccurrence(skeleton.train_multisets(), n_classes)
    quota = np.full(n_classes, len(geometry) / n_classes)
    frames = [group for _, group in geometry.groupby("frame", sort=True)]
    order = sorted(range(len(frames)), key=lambda f: (-len(frames[f]), rng.random()))
    groups = []  # (frame, member rows, size log-likelihood per class (C,))
    group_class: list[int] = []
    for f in order:
        rows = frames[f]
        log_rel = np.log(rows[["w", "h"]].max(axis=1).to_numpy() / rows[["width", "height"]].max(axis=1).to_numpy())
        patterns, weights = skeleton.patterns(len(rows))
        pattern = list(patterns[int(rng.choice(len(patterns), p=weights))])
        rng.shuffle(pattern)
        by_size = np.argsort(log_rel, kind="stable")
        start, chosen = 0, []
        for group_size in pattern:
            members = by_size[start:start + group_size]
            start += group_size
            z = (log_rel[members, None] - mu[None]) / sigma[None]
            loglik = -(0.5 * z ** 2 + np.log(sigma)[None]).sum(0)
            if fit is not None:
                loglik = loglik + SHAPE_FIT_WEIGHT * np.log(fit[rows.index[members]] + 1e-3).sum(0)
            room = quota - group_size  # a group fits a class with quota left for all of it
            score = np.where(room >= 0, np.log1p(np.maximum(room, 0.0)), room - 3.0) + loglik
            if chosen:
                score = score + np.log(K[chosen[0]] + 1e-6)
                score[chosen] = -np.inf
            p = np.exp(score - score.max())
            c = int(rng.choice(n_classes, p=p / p.sum()))
            chosen.append(c)
            quota[c] -= group_size
            groups.append((f, members, loglik))
            group_class.append(c)
    _swap_classes(groups, group_class, rng, sweeps, sharpness)
    labels = [np.empty(len(rows), np.int64) for rows in frames]
    for (f, members, _), c in zip(groups, group_class):
        labels[f][members] = c
    return labels


def _swap_classes(groups: list, group_class: list[int], rng: np.random.Generator, sweeps: int,
                  sharpness: float) -> None:
    """Metropolis swaps of the classes of two groups of equal size (class counts stay fixed); a swap that
    would put one class twice in a frame is not proposed."""
    by_size: dict[int, list[int]] = {}
    for g, (_, members, _) in enumerate(groups):
        by_size.setdefault(len(members), []).append(g)
    in_frame: dict[int, set[int]] = {}
    for (f, _, _), c in zip(groups, group_class):
        in_frame.setdefault(f, set()).add(c)
    for _ in range(sweeps * len(groups)):
        size = len(groups[int(rng.integers(len(groups)))][1])
        pool = by_size[size]
        if len(pool) < 2:
            continue
        g, h = (pool[int(i)] for i in rng.choice(len(pool), 2, replace=False))
        a, b = group_class[g], group_class[h]
        (fg, _, lg), (fh, _, lh) = groups[g], groups[h]
        if a == b or fg == fh or b in in_frame[fg] or a in in_frame[fh]:
            continue
        delta = sharpness * (lg[b] + lh[a] - lg[a] - lh[b])
        if delta >= 0 or rng.random() < np.exp(delta):
            group_class[g], group_class[h] = b, a
            in_frame[fg].remove(a), in_frame[fg].add(b)
            in_frame[fh].remove(b), in_frame[fh].add(a)


def sample_frames(multisets: list[np.ndarray], target_rois: int | None, n_classes: int,
                  rng: np.random.Generator, tries: int = 8) -> np.ndarray:
    """Sorted indices of whole frames whose ROIs add up to about target_rois, class-balanced: repeatedly
    take the class furthest below its share and add a random unused frame holding it (the first of a few
    candidates that does not push any class far over its share). None takes every frame."""
    if target_rois is None:
        return np.arange(len(multisets))
    cap = 1.5 * target_rois / n_classes + 1
    counts = np.zeros(n_classes)
    per_frame = [np.bincount(m, minlength=n_classes) for m in multisets]
    holding: list[list[int]] = [[] for _ in range(n_classes)]
    for f, labels in enumerate(multisets):
        for c in np.unique(labels):
            holding[c].append(f)
    for frames in holding:
        rng.shuffle(frames)
    used = np.zeros(len(multisets), bool)
    exhausted = np.zeros(n_classes, bool)
    tie_break = rng.random(n_classes) * 1e-3
    while counts.sum() < target_rois and not exhausted.all():
        c = int(np.argmin(np.where(exhausted, np.inf, counts + tie_break)))
        while holding[c] and used[holding[c][-1]]:
            holding[c].pop()
        if not holding[c]:
            exhausted[c] = True
            continue
        candidates = [f for f in holding[c][-tries:] if not used[f]][::-1]
        f = next((f for f in candidates if (counts + per_frame[f] <= cap).all()),
                 min(candidates, key=lambda f: len(multisets[f])))
        used[f] = True
        counts += per_frame[f]
    return np.flatnonzero(used)


def plan_frames(skeleton: Skeleton, preset: Preset, seed: int, shift: float, render_scale: float,
                genes: list[Genes]) -> dict[str, list[FramePlan]]:
    """The frames of both splits for a preset: which real frames, their labels, sizes and geometry."""
    n_classes = len(genes)
    fit = box_fit(class_extents(genes, np.random.default_rng([seed, 2])),
                  skeleton.test_geometry[["w", "h"]].to_numpy(np.float64))
    rng_test = np.random.default_rng([seed, SPLIT_CODE["test"], 0])
    test_labels = assign_test_labels(skeleton, n_classes, rng_test, fit)
    test_pick = sample_frames(test_labels, preset.test_rois, n_classes, rng_test)
    geometry = [g for _, g in skeleton.test_geometry.groupby("frame", sort=True)]
    test = []
    for f in test_pick:
        g = geometry[f]
        w, h = int(g["width"].iloc[0]), int(g["height"].iloc[0])
        test.append(FramePlan(max(8, round(w * render_scale)), max(8, round(h * render_scale)), test_labels[f],
                              boxes=g[["x", "y", "w", "h"]].to_numpy(np.float64) * render_scale))

    rng_train = np.random.default_rng([seed, SPLIT_CODE["train"], 0])
    multisets = skeleton.train_multisets()
    train_pick = sample_frames(multisets, preset.train_rois, n_classes, rng_train)
    # Train frames come from the same cameras: frame sizes drawn from the real test frames.
    frame_sizes = np.array([(g["width"].iloc[0], g["height"].iloc[0]) for g in geometry], np.float64)
    mu, sigma = class_size_model(skeleton, n_classes)
    gain = np.log(1.0 + TRAIN_SIZE_GAIN * shift)
    train = []
    for f in train_pick:
        labels = multisets[f]
        w, h = frame_sizes[int(rng_train.integers(len(frame_sizes)))] * render_scale
        # One camera distance per frame plus each animal's own size.
        log_rel = (mu[labels] + gain + rng_train.normal(0, 0.25)
                   + rng_train.normal(0, 1, len(labels)) * np.sqrt(np.maximum(sigma[labels] ** 2 - 0.25 ** 2, 0.01)))
        rel = np.clip(np.exp(log_rel), MIN_REL_SIZE, MAX_REL_SIZE)
        train.append(FramePlan(max(8, round(w)), max(8, round(h)), labels, sizes=rel * max(w, h)))
    return {"train": train, "test": test}


# ---------------------------------------------------------------- rendering

def _paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Alpha-blend a sprite into the frame with its top-left corner at (x0, y0), clipping at borders."""
    h, w = alpha.shape
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + w, frame.shape[1]), min(y0 + h, frame.shape[0])
    if fx1 <= fx0 or fy1 <= fy0:
        return
    a = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0, None]
    region = frame[fy0:fy1, fx0:fx1]
    region *= 1 - a
    region += rgb[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] * a


def _iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def _tight_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(alpha > 0.2)
    if len(xs) == 0:
        ys, xs = np.nonzero(alpha > 0)
    if len(xs) == 0:
        return 0, 0, alpha.shape[1], alpha.shape[0]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _sprite(genes: Genes, size: float, upright: bool, rng) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """A drawn individual and its tight box (x0, y0, x1, y1) inside the sprite."""
    angle = rng.normal(0, 15) if upright else rng.uniform(0, 360)
    rgb, alpha = draw_sprite(genes, size, angle, rng, flip=bool(rng.random() < 0.5))
    return rgb, alpha, _tight_box(alpha)


def _sprite_in_box(genes: Genes, w: float, h: float, upright: bool,
                   rng) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """An individual drawn for a real w x h box: the orientation whose extent fits the box best (near upright
    for animals standing on the seafloor) and the size at which its tight box has the box's long side, found
    on a trial drawing; then the same individual is drawn again at that size and angle, like a train animal
    (resizing the trial drawing would blur it: test animals would look unlike every train animal)."""
    flip = bool(rng.random() < 0.5)
    draw_seed = int(rng.integers(2 ** 63))
    rgb, alpha = draw_sprite(genes, max(w, h), 0.0, np.random.default_rng(draw_seed), flip=flip)
    ys, xs = np.nonzero(alpha > 0.2)
    if len(xs) < 2:
        return rgb, alpha, _tight_box(alpha)
    centre = (alpha.shape[0] - 1) / 2
    offset = rng.uniform(0, 360)
    angles = rng.normal(0, 15, 6) if upright else (offset + np.arange(0, 360, 22.5)) % 360
    rad = np.deg2rad(angles)[:, None]
    extent_w, extent_h = rotated_extents(xs[None] - centre, ys[None] - centre, rad)
    fit = np.minimum(w / extent_w, h / extent_h)
    best = int(np.argmax(fit + rng.uniform(0, 0.02, len(fit))))
    # The long side of the animal's tight box matches the real box's (the real box sizes stay), its aspect
    # follows the animal, which the orientation above brings near the real box's.
    scale = float(np.clip(max(w, h) / max(extent_w[best], extent_h[best]), 0.25, 4.0))
    rgb, alpha = draw_sprite(genes, max(w, h) * scale, float(angles[best]), np.random.default_rng(draw_seed),
                             flip=flip)
    return rgb, alpha, _tight_box(alpha)


def _place(bw: int, bh: int, width: int, height: int, on_floor: bool, horizon: float, placed: list,
           rng) -> tuple[float, float]:
    """Centre for a bw x bh animal: mostly inside the frame (on the seafloor if benthic), little overlap."""
    for attempt in range(12):
        if attempt < 11:
            cx = rng.uniform(-0.2 * bw, width + 0.2 * bw)
            lo = horizon + 0.3 * bh if on_floor else 0.0
            cy = rng.uniform(min(lo, height - bh / 2), height + 0.2 * bh)
        else:  # last resort: fully inside the frame
            cx = rng.uniform(bw / 2, max(width - bw / 2, bw / 2 + 1))
            cy = rng.uniform(bh / 2, max(height - bh / 2, bh / 2 + 1))
        box = np.clip([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 0, [width, height, width, height])
        cw, ch = box[2] - box[0], box[3] - box[1]
        xywh = [box[0], box[1], cw, ch]
        if cw * ch / (bw * bh) > 0.6 and min(cw, ch) >= 2 and all(_iou(xywh, p[5]) < 0.3 for p in placed):
            break
    return cx, cy


def frame_individuals(labels: np.ndarray, genes: list[Genes], p_lookalike: float, rng: np.random.Generator,
                      atypical_frames: float = 0.0) -> list[Genes]:
    """Genes of each animal of a frame. Animals of one taxon in a frame are usually one species seen alike:
    the first one drawn of a taxon sets the look (an atypical or misleading one included) and its siblings
    vary little around it (SIBLING_VARIATION), so what defeats a model on one defeats it on all."""
    first: dict[int, Genes] = {}
    out = []
    scale = ATYPICAL_VARIATION if rng.random() < atypical_frames else 1.0
    for label in labels:
        label = int(label)
        if label not in first:
            first[label] = sample_instance(individual_look(genes, label, rng, p_lookalike), rng, scale)
        out.append(sample_instance(first[label], rng, SIBLING_VARIATION))
    return out


def degrade_individual(rgb: np.ndarray, alpha: np.ndarray, blur: float, haze: float,
                       water: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One individual's own imaging before it is pasted: `haze` blends it towards the water colour (it is
    further away or behind more particles), `blur` (Gaussian sigma, px) blurs it and its edge (it is out of
    the focal plane). Returns (rgb, alpha, pad): the sprite grew by `pad` px on each side."""
    if haze > 0:
        rgb = rgb * np.float32(1 - haze) + water.astype(np.float32) * np.float32(haze)
    if blur < 0.3:
        return rgb, alpha, 0
    pad = int(np.ceil(3 * blur)) + 1
    premult = np.pad(rgb * alpha[..., None], ((pad, pad), (pad, pad), (0, 0)))
    alpha = cv2.GaussianBlur(np.pad(alpha, pad), (0, 0), blur)
    premult = cv2.GaussianBlur(premult, (0, 0), blur)
    return premult / np.maximum(alpha, 1e-3)[..., None], alpha, pad


def render_frame(plan: FramePlan, genes: list[Genes], style: FrameStyle, rng: np.random.Generator,
                 blur_scale: float = 1.0, profiles: Profiles | None = None,
                 info: dict | None = None) -> tuple[np.ndarray, list[list[float]]]:
    """Draw one frame. Returns (BGR uint8 image, bbox [x, y, w, h] per object, clipped to the frame).

    With fixed boxes (test) each animal is drawn to fit its box, centred; otherwise (train) animals of
    the planned long sides are placed and their tight boxes returned. The frame's habitat (biotope and
    depth) is drawn from the habitat profiles of all its taxa (src/synthetic/habitat.py); sessile and
    crawling animals, and most near-bottom swimmers, rest on its seafloor (in a test frame the horizon is
    put above every such box). Its quality (one draw per frame) degrades all its animals, each around
    that level: their own blur and haze vary, so a clearer neighbour can help. `info`, when given, receives
    the frame's habitat (biotope, substrate, zone, depth_m) and horizon."""
    width, height, labels = plan.width, plan.height, plan.labels
    quality = float(rng.uniform(0.6, 1.0) if rng.random() < style.bad_frames else rng.beta(*style.quality))
    if profiles is None:
        raise ValueError("render_frame needs the concepts' habitat profiles (habitat.concept_profiles)")
    habitat = choose_habitat(labels, profiles, rng)
    on_floor = [rests_on_floor(int(profiles.mode[label]), habitat, rng) for label in labels]
    max_horizon = None
    if plan.boxes is not None and any(on_floor):
        max_horizon = min(y + h / 2 - 0.3 * h for (x, y, w, h), f in zip(plan.boxes, on_floor) if f)
    frame, horizon = render_background(width, height, habitat, rng, max_horizon)
    water = water_colour(habitat.depth01)
    if info is not None:
        info.update(biotope=habitat.biotope, substrate=habitat.substrate, zone=ZONES[habitat.zone][0],
                    depth_m=round(habitat.depth_m, 1),
                    horizon=round(float(horizon), 2))
    frame_blur = _lerp(style.blur, quality) * rng.uniform(0.8, 1.2) * blur_scale

    placed = []  # (y for z-order, sprite rgb, alpha, x0, y0, box)
    individuals = frame_individuals(labels, genes, style.p_lookalike, rng, style.atypical_frames)
    for k, (label, g) in enumerate(zip(labels, individuals)):
        upright = on_floor[k] and g.plan in UPRIGHT_PLANS
        if plan.boxes is not None:
            x, y, w, h = plan.boxes[k]
            rgb, alpha, (bx0, by0, bx1, by1) = _sprite_in_box(g, w, h, upright, rng)
            cx, cy = x + w / 2, y + h / 2
            # The box is the drawn animal's tight box, as an annotator draws it: a real box the animal
            # did not fill would show test animals smaller in their crops than any train animal.
            box = np.clip([cx - (bx1 - bx0) / 2, cy - (by1 - by0) / 2, cx + (bx1 - bx0) / 2, cy + (by1 - by0) / 2],
                          0, [width, height, width, height])
        else:
            rgb, alpha, (bx0, by0, bx1, by1) = _sprite(g, float(plan.sizes[k]), upright, rng)
            cx, cy = _place(bx1 - bx0, by1 - by0, width, height, on_floor[k], horizon, placed, rng)
            box = np.clip([cx - (bx1 - bx0) / 2, cy - (by1 - by0) / 2, cx + (bx1 - bx0) / 2, cy + (by1 - by0) / 2],
                          0, [width, height, width, height])
        # The individual's own blur around the frame's (the frame blurs everything by FRAME_BLUR_SHARE of
        # its level, so the total is the frame's level on average) and its own haze.
        own = frame_blur * np.exp(rng.normal(-0.2, INDIVIDUAL_BLUR_SPREAD))
        extra = float(np.sqrt(max(own ** 2 - (FRAME_BLUR_SHARE * frame_blur) ** 2, 0.0)))
        haze = float(rng.uniform(0.0, INDIVIDUAL_HAZE) * (0.3 + quality))
        rgb, alpha, pad = degrade_individual(rgb, alpha, extra, haze, water)
        x0 = int(round(cx - (bx1 - bx0) / 2)) - bx0 - pad
        y0 = int(round(cy - (by1 - by0) / 2)) - by0 - pad
        xywh = [round(float(box[0]), 2), round(float(box[1]), 2), round(float(box[2] - box[0]), 2),
                round(float(box[3] - box[1]), 2)]
        placed.append((cy, rgb, alpha, x0, y0, xywh))

    _background_fauna(frame, labels, genes, profiles, habitat, horizon, [p[5] for p in placed], frame_blur, water,
                      rng)
    boxes: list[list[float]] = [[] for _ in labels]
    for i in sorted(range(len(placed)), key=lambda i: placed[i][0]):  # far (high) first, near last
        _, rgb, alpha, x0, y0, xywh = placed[i]
        _paste(frame, rgb, alpha, x0, y0)
        boxes[i] = xywh
        if rng.random() < 0.15:  # debris or a rock partly in front of the animal
            x, y, w, h = xywh
            centre = (int(x + rng.choice([0.0, 1.0]) * w), int(y + rng.uniform(0.3, 1.0) * h))
            axes = (int(w * rng.uniform(0.12, 0.3)) + 1, int(h * rng.uniform(0.1, 0.25)) + 1)
            under = frame[min(max(centre[1], 0), height - 1), min(max(centre[0], 0), width - 1)]
            colour = tuple(float(v) for v in under * rng.uniform(0.5, 0.9))
            cv2.ellipse(frame, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    snow = SNOW_BY_ZONE[habitat.zone] * (1.5 if not habitat.seafloor else 1.0)
    return _imaging(frame, habitat.depth01, style, quality, FRAME_BLUR_SHARE * frame_blur, rng, snow), boxes


def _background_fauna(frame: np.ndarray, labels: np.ndarray, genes: list[Genes], profiles: Profiles, habitat: Habitat,
                      horizon: float, boxes: list, frame_blur: float, water: np.ndarray, rng) -> None:
    """Animals nobody boxed, drawn into the frame behind the boxed ones: Poisson numbers of the frame's own
    taxa (AGGREGATION, by mode of life) and of the habitat's community (COMMUNITY), clear of every box: the
    context shows who lives here. Real deep-sea aggregations are patches of individuals of about one size, so
    the first NEIGHBOURS of each boxed animal's taxon stand near it (within NEIGHBOUR_REACH of its long side
    from its centre, i.e. in the window around it) and about its size (NEIGHBOUR_SIZE); the rest of the
    frame's own taxa and the community are smaller than the frame's smallest box and spread over the frame,
    further away (hazed, blurred)."""
    height, width = frame.shape[:2]
    members = community(habitat, profiles)
    near: list[tuple[int, list]] = []  # (taxon, the boxed individual it stands beside)
    taxa: list[int] = []
    for k, c in enumerate(labels):
        n = int(rng.poisson(AGGREGATION[int(profiles.mode[c])]))
        m = min(n, int(rng.integers(NEIGHBOURS[0], NEIGHBOURS[1] + 1)))
        near += [(int(c), boxes[k])] * m
        taxa += [int(c)] * (n - m) if k == list(labels).index(c) else []
    taxa += [int(c) for c in rng.choice(len(members), int(rng.poisson(COMMUNITY)), p=members)]
    smallest = min((max(b[2], b[3]) for b in boxes), default=0.03 * max(width, height))
    top = max(horizon, 0.0)
    for c, beside in [(c, b) for c, b in near] + [(c, None) for c in taxa]:
        floor = habitat.seafloor and MODES[int(profiles.mode[c])] != "pelagic"
        if beside is not None:
            side = max(beside[2], beside[3])
            size = float(np.clip(side * rng.uniform(*NEIGHBOUR_SIZE), 3.0, MAX_REL_SIZE * max(width, height)))
        else:
            size = float(np.clip(smallest * rng.uniform(0.4, 0.9), 3.0, 0.04 * max(width, height)))
        g = sample_instance(individual_look(genes, c, rng), rng)
        rgb, alpha, (bx0, by0, bx1, by1) = _sprite(g, size, floor and g.plan in UPRIGHT_PLANS, rng)
        bw, bh = bx1 - bx0, by1 - by0
        for _ in range(6):  # a spot clear of every box
            if beside is not None:
                reach = NEIGHBOUR_REACH * max(beside[2], beside[3])
                cx = beside[0] + beside[2] / 2 + rng.uniform(-reach, reach)
                cy = beside[1] + beside[3] / 2 + rng.uniform(-reach, reach)
                if floor:
                    cy = max(cy, top)
            else:
                cx = rng.uniform(0, width)
                cy = rng.uniform(top, height) if floor else rng.uniform(0, height)
            if all(cx + bw / 2 + 2 < x or cx - bw / 2 - 2 > x + w or cy + bh / 2 + 2 < y or cy - bh / 2 - 2 > y + h
                   for x, y, w, h in boxes):
                break
        else:
            continue
        far = float(np.clip((cy - top) / max(height - top, 1.0), 0, 1)) if floor else rng.uniform(0, 1)
        if beside is not None:  # as near as the boxed one: its own blur and haze, not the far ones'
            far = 1.0
        rgb, alpha, pad = degrade_individual(rgb, alpha, frame_blur * rng.uniform(0.3, 1.0),
                                             (0.35 - 0.3 * far) * rng.uniform(0.5, 1.0), water)
        _paste(frame, rgb, alpha, int(round(cx - bw / 2)) - bx0 - pad, int(round(cy - bh / 2)) - by0 - pad)


def _lerp(bounds, q: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * q


def _imaging(frame: np.ndarray, depth: float, style: FrameStyle, quality: float, blur: float,
             rng, snow_gain: float = 1.0) -> np.ndarray:
    """Lamp and vignette, turbidity, marine snow, blur (sigma `blur` px) and sensor noise at the frame's
    quality; to uint8."""
    h, w = frame.shape[:2]
    jitter = lambda: rng.uniform(0.8, 1.2)  # noqa: E731 - frames of one quality still differ
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.6) * h
    dx2 = ((np.arange(w, dtype=np.float32) - cx) ** 2)[None, :]
    dy2 = ((np.arange(h, dtype=np.float32) - cy) ** 2)[:, None]
    vignette = min(_lerp(style.vignette, quality) * jitter(), 0.9)
    lamp = (1.0 - vignette / (w * w / 4 + h * h / 4) * (dx2 + dy2)) * _lerp(style.brightness, quality) * jitter()
    t = min(_lerp(style.turbidity, quality) * jitter(), 0.9)
    gain = lamp[..., None] * (np.asarray(style.lamp_bgr, np.float32) * np.float32(1 - t))
    frame *= gain
    frame += water_colour(depth).astype(np.float32) * np.float32(1.2 * t)
    for _ in range(int(_lerp(style.snow, quality) * snow_gain * jitter() * w * h / 1e5)):
        v = float(rng.uniform(120, 230))
        cv2.circle(frame, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.integers(0, 2)), (v, v, v), -1,
                   cv2.LINE_AA)
    # Noise before blur: correlated like video sensor noise (and the frames compress better). Uniform
    # noise (5x faster to draw than normal) with the same variance; the blur makes it near-Gaussian.
    noise = rng.random(frame.shape, dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(1.6 * np.sqrt(12.0) * _lerp(style.noise, quality) * jitter())
    frame += noise
    frame = cv2.GaussianBlur(frame, (0, 0), max(blur, 0.1))
    np.clip(frame, 0, 255, out=frame)
    frame += 0.5
    return frame.astype(np.uint8)


# ---------------------------------------------------------------- the benchmark on disk

def _coco_header(preset: str, seed: int, shift: float) -> dict:
    return {
        "info": {"year": 2025, "version": str(GENERATOR_VERSION),
                 "description": f"Generated FathomNet-shaped benchmark (preset={preset}, seed={seed}, shift={shift})",
                 "contributor": "src.synthetic.generator", "url": "", "date_created": "2025/01/08"},
        "images": [], "licenses": [{"id": 0, "name": "synthetic, CC0", "url": ""}], "annotations": [], "categories": [],
    }


def _render_chunk(job: tuple) -> list[tuple[dict, list[list[float]], dict]]:
    """Render and write a chunk of frames (runs in a worker process). Returns (image record, boxes, habitat)
    each."""
    split, seed, style, blur_scale, frame_dir, genes, profiles, chunk = job
    out = []
    for i, plan in chunk:
        rng = np.random.default_rng([seed, SPLIT_CODE[split], 1, i])  # per frame: any order, same pixels
        file_name = f"{uuid.UUID(bytes=rng.bytes(16), version=4)}.jpg"
        info: dict = {}
        image, boxes = render_frame(plan, genes, style, rng, blur_scale, profiles, info)
        path = Path(frame_dir) / file_name
        ok, encoded = cv2.imencode(".jpg", image, JPEG_PARAMS)
        if not ok:
            raise RuntimeError(f"could not encode frame {path}")
        atomic_write_bytes(path, encoded.tobytes())
        url = path.resolve().as_uri()
        captured = (dt.datetime(2012, 1, 1) + dt.timedelta(minutes=int(rng.integers(0, 6_000_000))))
        out.append(({"id": i + 1, "width": plan.width, "height": plan.height, "file_name": file_name, "license": 0,
                     "flickr_url": url, "coco_url": url, "date_captured": captured.strftime("%Y-%m-%d %H:%M:%S")},
                    boxes, info))
    return out


def _generate_split(split: str, plans: list[FramePlan], genes, style: FrameStyle, blur_scale: float, out_dir: Path,
                    seed: int, header: dict, taxonomy: Taxonomy, pool: ProcessPoolExecutor | None,
                    progress: bool, profiles: Profiles) -> tuple[dict, list[int], list[dict]]:
    """Render one split's frames; returns (COCO dict, class index of each annotation in id order, the habitat
    of each frame)."""
    frame_dir = out_dir / "frames" / split
    frame_dir.mkdir(parents=True, exist_ok=True)
    chunk = 16
    numbered = list(enumerate(plans))
    jobs = [(split, seed, style, blur_scale, str(frame_dir), genes, profiles, numbered[k:k + chunk])
            for k in range(0, len(numbered), chunk)]
    bar = tqdm(total=len(plans), desc=f"{split} frames", disable=not progress, leave=False)
    results = []
    for part in (pool.map if pool else map)(_render_chunk, jobs):
        results.extend(part)
        bar.update(len(part))
    bar.close()
    coco = json.loads(json.dumps(header))
    coco["categories"] = [{"id": cid, "name": name, "supercategory": ""}
                          for cid, name in zip(taxonomy.category_ids, taxonomy.names)]
    labels_out, habitats = [], []
    for (image, boxes, info), plan in zip(results, plans):
        coco["images"].append(image)
        habitats.append({"split": split, "image_id": image["id"], **info})
        for label, box in zip(plan.labels, boxes):
            labels_out.append(int(label))
            coco["annotations"].append({
                "id": len(labels_out), "image_id": image["id"],
                "category_id": int(taxonomy.category_ids[label]) if split == "train" else None,
                "segmentation": [], "area": round(box[2] * box[3], 2), "bbox": [float(v) for v in box], "iscrowd": 0,
            })
    return coco, labels_out, habitats


def _code_hash() -> str:
    """Hash of the generator's code and skeleton files: a changed drawing makes another data set."""
    import hashlib

    from src.synthetic import habitat, shapes, skeleton
    digest = hashlib.blake2b(digest_size=8)
    for path in (Path(__file__), Path(shapes.__file__), Path(skeleton.__file__), Path(habitat.__file__),
                 habitat.HABITAT_CSV,
                 *sorted(skeleton.SKELETON_DIR.glob("*.csv"))):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def generator_record(preset: str, seed: int, shift: float = DEFAULT_SHIFT, render_scale: float = DEFAULT_RENDER_SCALE,
                     appearance: Appearance = Appearance(), taxonomy: Taxonomy | None = None) -> dict:
    """The parameters a generation writes to generator.json: equal records mean equal data sets."""
    taxonomy = taxonomy or load_taxonomy()
    return json.loads(json.dumps({
        "generator_version": GENERATOR_VERSION, "code": _code_hash(), "preset": preset, "seed": seed, "shift": shift,
        "render_scale": render_scale, "preset_sizes": asdict(PRESETS[preset]),
        "train_style": asdict(split_style("train", shift)), "test_style": asdict(split_style("test", shift)),
        "appearance": asdict(appearance), "classes": list(taxonomy.names)}))


def generate_benchmark(out_dir: str | Path, preset: str = "demo", seed: int = 0, shift: float = DEFAULT_SHIFT,
                       taxonomy: Taxonomy | None = None, workers: int | None = None, progress: bool = True,
                       render_scale: float = DEFAULT_RENDER_SCALE, appearance: Appearance = Appearance(),
                       skeleton: Skeleton | None = None) -> Path:
    """Write a generated benchmark (frames, COCO train/test files, solution.csv) under out_dir.

    Frames are rendered by `workers` processes (default: every CPU); the result does not depend on it.
    Deterministic for (preset, seed, shift, render_scale, appearance): same JSON and CSV bytes, same pixels.
    Refuses to write into a folder that holds COCO files it did not generate. Returns out_dir."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be in 0..1, got {shift}")
    if not 0.05 <= render_scale <= 1.0:
        raise ValueError(f"render_scale must be in 0.05..1, got {render_scale}")
    out_dir = Path(out_dir)
    if (out_dir / "dataset_train.json").exists() and not (out_dir / "generator.json").exists():
        raise FileExistsError(f"{out_dir} holds a dataset_train.json that this generator did not write; "
                              "choose another --out")
    taxonomy = taxonomy or load_taxonomy()
    skeleton = skeleton or load_skeleton()
    workers = workers or os.cpu_count() or 1
    (out_dir / "generator.json").unlink(missing_ok=True)  # the folder is incomplete until rewritten
    for split in SPLIT_CODE:  # frames of an earlier generation (ours, see the check above)
        for old in [*(out_dir / "frames" / split).glob("*.png"), *(out_dir / "frames" / split).glob("*.jpg")]:
            old.unlink()
    genes = concept_genes(taxonomy, appearance)
    profiles = concept_profiles(tuple(taxonomy.names))
    plans = plan_frames(skeleton, PRESETS[preset], seed, shift, render_scale, genes)
    blur_scale = render_scale / DEFAULT_RENDER_SCALE
    header = _coco_header(preset, seed, shift)
    solution: list[tuple[int, str]] = []
    scenes: list[dict] = []
    with contextlib.ExitStack() as stack:
        # spawn: workers never inherit a parent's thread pools (torch, OpenCV) mid-state.
        pool = stack.enter_context(ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=cv2.setNumThreads, initargs=(1,))) if workers > 1 else None
        for split in SPLIT_CODE:
            coco, labels, habitats = _generate_split(split, plans[split], genes, split_style(split, shift), blur_scale, out_dir,
                                           seed, header, taxonomy, pool, progress, profiles)
            if split == "test":
                solution = [(ann["id"], taxonomy.names[label]) for ann, label in zip(coco["annotations"], labels)]
            atomic_write_text(out_dir / f"dataset_{split}.json", json.dumps(coco, indent=1) + "\n")
            scenes.extend(habitats)
    frame = pd.DataFrame(solution, columns=["annotation_id", "concept_name"])
    atomic_write_text(out_dir / "solution.csv", frame.to_csv(index=False))
    atomic_write_text(out_dir / "frame_habitats.csv", pd.DataFrame(scenes).to_csv(index=False))
    atomic_write_json(out_dir / "generator.json", generator_record(preset, seed, shift, render_scale, appearance,
                                                                   taxonomy))
    return out_dir


# ---------------------------------------------------------------- preview contact sheet

def _frame_path(image: dict, coco_path: Path, split: str) -> Path:
    url = urlparse(image.get("coco_url") or "")
    if url.scheme == "file":
        return Path(unquote(url.path))
    return coco_path.parent / "frames" / split / image["file_name"]


def _crop(frame: np.ndarray, box, tile: int) -> np.ndarray:
    """A square crop 1.25x the box's longest side around its centre, padded at borders, resized to tile."""
    x, y, w, h = box
    side = max(w, h) * 1.25
    cx, cy = x + w / 2, y + h / 2
    M = np.array([[tile / side, 0, tile / 2 - cx * tile / side], [0, tile / side, tile / 2 - cy * tile / side]])
    return cv2.warpAffine(frame, M, (tile, tile), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(128, 128, 128))


def write_preview(root: str | Path, out_png: str | Path, taxonomy: Taxonomy | None = None, per_row: int = 6,
                  tile: int = 72) -> Path:
    """Contact sheet: one row per phylum, `per_row` concepts each (spread over its classes); a train crop
    of each on the left, a test (shifted) crop of the same concepts on the right."""
    root, taxonomy = Path(root), taxonomy or load_taxonomy()
    data = {s: json.loads((root / f"dataset_{s}.json").read_text()) for s in ("train", "test")}
    truth = pd.read_csv(root / "solution.csv").set_index("annotation_id")["concept_name"]
    best_crop: dict[tuple[str, str], tuple[float, dict, list]] = {}  # largest box away from the border
    for split, coco in data.items():
        images = {im["id"]: im for im in coco["images"]}
        for ann in coco["annotations"]:
            name = (taxonomy.names[taxonomy.category_ids.index(ann["category_id"])] if split == "train"
                    else truth.get(ann["id"]))
            image, (x, y, w, h) = images[ann["image_id"]], ann["bbox"]
            score = w * h * (1.0 if 0 < x and 0 < y and x + w < image["width"] and y + h < image["height"] else 0.01)
            if score > best_crop.get((split, name), (-1.0,))[0]:
                best_crop[(split, name)] = (score, image, ann["bbox"])
    phyla = sorted({lin[1] for lin in taxonomy.lineages})
    label_w, gap, caption = 118, 14, 12
    width = label_w + 2 * per_row * tile + gap
    height = 16 + len(phyla) * (tile + caption + 4)
    sheet = np.full((height, width, 3), 255, np.uint8)
    texts = [((label_w, 2), "train"), ((label_w + per_row * tile + gap, 2), "test (shifted)")]
    for r, phylum in enumerate(phyla):
        members = sorted((i for i, lin in enumerate(taxonomy.lineages) if lin[1] == phylum),
                         key=lambda i: [str(t) for t in taxonomy.lineages[i]])
        picks = np.unique(np.linspace(0, len(members) - 1, min(per_row, len(members))).round().astype(int))
        chosen = [members[k] for k in picks]  # spread over the phylum's classes
        y = 16 + r * (tile + caption + 4)
        texts.append(((4, y + tile // 2 - 6), phylum))
        for col, i in enumerate(chosen):
            name = taxonomy.names[i]
            for side, split in enumerate(("train", "test")):
                if (split, name) not in best_crop:
                    continue
                _, image, box = best_crop[(split, name)]
                frame = cv2.imread(str(_frame_path(image, root / f"dataset_{split}.json", split)), cv2.IMREAD_COLOR)
                if frame is None:
                    continue
                x = label_w + side * (per_row * tile + gap) + col * tile
                sheet[y:y + tile, x:x + tile - 2] = _crop(frame, box, tile)[:, : tile - 2]
                texts.append(((x, y + tile), name[: tile // 6]))
    return save_sheet(sheet, texts, out_png)



def save_sheet(sheet: np.ndarray, texts: list, out_png: str | Path) -> Path:
    """Write a BGR contact sheet with its captions ((x, y), text) as a 256-colour PNG (small enough for docs/)."""
    from PIL import Image, ImageDraw  # text rendering; only needed here

    pil = Image.fromarray(cv2.cvtColor(sheet, cv2.COLOR_BGR2RGB))
    draw = ImageDraw.Draw(pil)
    for xy, text in texts:
        draw.text(xy, text, fill=(0, 0, 0))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        pil.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    return out_png

def write_context_preview(root: str | Path, out_png: str | Path, per_side: int = 3, thumb: int = 200,
                          seed: int = 0) -> Path:
    """Whole frames by habitat: one row per biotope (frame_habitats.csv), `per_side` train frames on the
    left and test frames on the right, each with its boxes and its depth zone."""
    root = Path(root)
    scenes = pd.read_csv(root / "frame_habitats.csv")
    data = {s: json.loads((root / f"dataset_{s}.json").read_text()) for s in SPLIT_CODE}
    rng = np.random.default_rng(seed)
    th = thumb * 9 // 16
    label_w, gap, caption = 70, 12, 12
    biotopes = [b for b in BIOTOPES if b in set(scenes["biotope"])]
    sheet = np.full((16 + len(biotopes) * (th + caption + 4), label_w + 2 * per_side * (thumb + 2) + gap, 3), 255,
                    np.uint8)
    texts = [((label_w, 2), "train"), ((label_w + per_side * (thumb + 2) + gap, 2), "test")]
    for r, biotope in enumerate(biotopes):
        y = 16 + r * (th + caption + 4)
        texts.append(((4, y + th // 2 - 6), biotope))
        for side, split in enumerate(SPLIT_CODE):
            rows = scenes[(scenes["split"] == split) & (scenes["biotope"] == biotope)]
            if rows.empty:
                continue
            pick = rows.iloc[np.sort(rng.choice(len(rows), min(per_side, len(rows)), replace=False))]
            images = {im["id"]: im for im in data[split]["images"]}
            for col, row in enumerate(pick.itertuples()):
                image = images[int(row.image_id)]
                frame = cv2.imread(str(_frame_path(image, root / f"dataset_{split}.json", split)), cv2.IMREAD_COLOR)
                if frame is None:
                    continue
                k = min(thumb / frame.shape[1], th / frame.shape[0])
                small = cv2.resize(frame, (max(1, round(frame.shape[1] * k)), max(1, round(frame.shape[0] * k))),
                                   interpolation=cv2.INTER_AREA)
                for ann in data[split]["annotations"]:
                    if ann["image_id"] == image["id"]:
                        bx, by, bw, bh = (v * k for v in ann["bbox"])
                        cv2.rectangle(small, (int(bx), int(by)), (int(bx + bw), int(by + bh)),
                                      (0, 255, 0) if split == "train" else (0, 0, 255), 1)
                x = label_w + side * (per_side * (thumb + 2) + gap) + col * (thumb + 2)
                sheet[y:y + small.shape[0], x:x + small.shape[1]] = small
                texts.append(((x, y + th), f"{row.zone}, {row.depth_m:.0f} m"))
    return save_sheet(sheet, texts, out_png)


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.synthetic",
        description="Generate a FathomNet-shaped benchmark (COCO files, JPEG frames, solution.csv): the real 79 "
                    "concepts and taxonomy, the real frames' label multisets and the real test geometry, with "
                    "drawn pixels; the test split is shifted (smaller objects, worse imaging).")
    parser.add_argument("--out", required=True, type=Path, help="output folder (ROOT)")
    parser.add_argument("--preset", default="demo", choices=list(PRESETS),
                        help="; ".join(f"{k}: {p.about}" for k, p in PRESETS.items()) + " (default demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shift", type=float, default=DEFAULT_SHIFT,
                        help=f"test shift strength 0..1: train objects are 1 + {TRAIN_SIZE_GAIN} x shift times the "
                             f"test size, test frames blurrier, more turbid and darker (default {DEFAULT_SHIFT})")
    parser.add_argument("--render-scale", type=float, default=DEFAULT_RENDER_SCALE,
                        help=f"frame size relative to the real frames (default {DEFAULT_RENDER_SCALE}, the "
                             "calibrated setting for 32-px models; use 1.0 with 112-px models on a GPU)")
    parser.add_argument("--preview", type=Path, default=None, help="also write a contact sheet PNG here")
    parser.add_argument("--context-preview", type=Path, default=None,
                        help="also write whole frames by habitat (train and test, with their boxes) as a PNG here")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes rendering frames (default: every CPU); the output does not depend on it")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if not 0.0 <= args.shift <= 1.0:
        parser.error(f"--shift must be in 0..1, got {args.shift}")
    if not 0.05 <= args.render_scale <= 1.0:
        parser.error(f"--render-scale must be in 0.05..1, got {args.render_scale}")
    start = time.perf_counter()
    try:
        root = generate_benchmark(args.out, args.preset, args.seed, args.shift, workers=args.workers,
                                  progress=not args.no_progress, render_scale=args.render_scale)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"error: cannot write under {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    n_train = len(json.loads((root / "dataset_train.json").read_text())["annotations"])
    n_test = len(pd.read_csv(root / "solution.csv"))
    print(f"wrote {root}: {n_train} train and {n_test} test annotations in {time.perf_counter() - start:.1f} s")
    if args.preview:
        print(f"preview: {write_preview(root, args.preview)}")
    if args.context_preview:
        print(f"context preview: {write_context_preview(root, args.context_preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
