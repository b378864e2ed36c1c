"""Decoding a whole ensemble: its saved predictions, the decoders' parameters fitted on validation, every decoder.

One layer above the pure math of src.ensemble (GMU, vote, Bayes, calibration, diffusion) and src.frames
(frame-aware mean field): `EnsemblePredictions` holds an ensemble's predictions on one split (read from the
members' `<split>_probs.npz` by `load_predictions`), `fit_frame_prior` and `fit_validation_temperature` fit
the frame decoders' prior and bayes_cal's temperature on validation, and `decode_ensemble` decodes with every
decoder: the one decoding path of `submit`, the Kaggle notebook and `src.predict`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.ensemble import (
    apply_temperature,
    decode_argmax,
    decode_bayes,
    decode_diffusion,
    fit_temperature,
    gmu,
    mean_over_views,
    member_labels_and_u,
    taxonomy_graph,
    vote,
)
from src.frames import cooccurrence_prior, fit_frame_weight, frame_mean_field
from src.run_files import probs_file
from src.taxonomy import Taxonomy, distance_matrix

FRAME_DECODERS = ("frame_bayes", "frame_argmax")  # frame-aware: need a FramePrior and the ROIs' frame ids
DECODERS = ("argmax", "vote", "bayes", "bayes_cal", "diffusion", *FRAME_DECODERS)  # every name decode_ensemble knows


class DecoderError(ValueError):
    """No decoder can be chosen (none configured, or every one skipped); the message says why."""


def preferred_decoder(available: list[str]) -> str:
    """The decoder a submission uses by default: frame_bayes (the lowest distance on the generated benchmark,
    bench/RESULTS.md), else bayes, else the first of `available`; DecoderError when there is none."""
    if not available:
        raise DecoderError("no decoder left to choose from: every decoder was skipped (see the submit table: "
                           "missing validation predictions or frames) or none is configured (decoding.decoders)")
    return next((d for d in ("frame_bayes", "bayes") if d in available), available[0])


@dataclass
class EnsemblePredictions:
    """Predictions of M members on one split, aligned by annotation id.

    `members` hold each member's per-head probabilities averaged over its test-time views (`mean_over_views`);
    the ensemble mean is then the mean over members of their head means."""

    annotation_id: np.ndarray  # (N,)
    members: list[np.ndarray]  # M arrays (H_m, N, C) of per-head softmax (mean over the views)
    labels: np.ndarray | None  # (N,) true class index (validation) or None
    frame_ids: np.ndarray | None = None  # (N,) frame (COCO image_id) of each ROI, for the frame decoders
    views: tuple[str, ...] = ("identity",)  # the test-time views averaged into `members`
    member_views: list[np.ndarray] | None = None  # M arrays (T, H_m, N, C) per view, when there are T > 1 views
    set_scores: list[np.ndarray] | None = None  # M arrays (N, C): the average-K set head's sigmoid scores

    @classmethod
    def from_views(cls, annotation_id: np.ndarray, member_views: list[np.ndarray], views, labels=None,
                   **fields) -> "EnsemblePredictions":
        """From each member's per-view probabilities (T, H_m, N, C): members = `mean_over_views`."""
        views = tuple(views)
        if any(len(v) != len(views) for v in member_views):
            raise ValueError(f"every member needs the {len(views)} views {views}")
        return cls(annotation_id, [mean_over_views(v) for v in member_views], labels, views=views,
                   member_views=list(member_views) if len(views) > 1 else None, **fields)

    @property
    def member_means(self) -> np.ndarray:
        """(M, N, C) each member's mean over its heads."""
        return np.stack([m.mean(axis=0) for m in self.members])

    @property
    def mean(self) -> np.ndarray:
        """(N, C) the ensemble prediction: mean over members of their head means."""
        return self.member_means.mean(axis=0)


@dataclass(frozen=True)
class FramePrior:
    """What frame-aware decoding needs beside the probabilities: the label co-occurrence prior K (C, C) of
    the training frames, and the weight w of each frame decoder fitted on validation frames."""

    K: np.ndarray
    weights: dict[str, float]  # frame decoder -> w
    iterations: int = 1  # mean-field steps


def fit_frame_prior(val: EnsemblePredictions | None, train_frame_ids: np.ndarray, train_labels: np.ndarray,
                    D: np.ndarray, decoders=FRAME_DECODERS, iterations: int = 1,
                    smoothing: float = 1.0) -> FramePrior | None:
    """K from the labelled training ROIs outside the validation frames (`src.frames.cooccurrence_prior`), and
    per frame decoder the weight w with the least validation mean distance (`src.frames.fit_frame_weight`).

    train_frame_ids, train_labels (N_train,): the frame and class (-1 unknown) of every training annotation;
    val: the ensemble's validation predictions with labels and frame ids (None without them)."""
    if val is None or val.labels is None or val.frame_ids is None:
        return None
    train_frame_ids = np.asarray(train_frame_ids)
    outside = ~np.isin(train_frame_ids, val.frame_ids)  # validation frames fit w; they must not shape K
    K = cooccurrence_prior(train_frame_ids[outside], np.asarray(train_labels)[outside], D.shape[0], smoothing)
    keep = val.labels >= 0
    if not keep.any():
        return None
    mean = val.mean[keep]
    weights = {name: fit_frame_weight(mean, val.labels[keep], val.frame_ids[keep], K, D,
                                      decode=name.removeprefix("frame_"), iterations=iterations)[0]
               for name in decoders}
    return FramePrior(K, weights, iterations)


def frame_aware(probs: np.ndarray, frame_ids: np.ndarray, prior: FramePrior, decoder: str) -> np.ndarray:
    """(N, C) (or (..., N, C), each slice alone) frame-aware distributions with the weight of `decoder`."""
    probs = np.asarray(probs)
    if probs.ndim == 2:
        return frame_mean_field(probs, frame_ids, prior.K, prior.weights[decoder], prior.iterations)
    return np.stack([frame_aware(p, frame_ids, prior, decoder) for p in probs])


@dataclass
class Decoding:
    """Decoded labels per decoder, the temperature bayes_cal used, and the decoders that could not run."""

    labels: dict[str, np.ndarray]
    temperature: float | None
    skipped: dict[str, str]


def decode_ensemble(preds: EnsemblePredictions, decoders, taxonomy: Taxonomy, sigma: str, alpha: float,
                    temperature: float | None = None, frame_prior: FramePrior | None = None) -> Decoding:
    """Decode an ensemble with every named decoder (names from DECODERS).

    argmax: argmax of the ensemble mean; vote: mode of the members' labels, ties by each member's own U
    (GMU over its heads); bayes: least expected distance under the ensemble mean; bayes_cal: the same
    after temperature scaling (T fitted on validation, passed in); diffusion: argmax after taxonomy
    diffusion of the ensemble mean (alpha); frame_bayes / frame_argmax: Bayes / argmax of the frame-aware
    ensemble mean (`src.frames.frame_mean_field` over preds.frame_ids with the prior's K and the decoder's w)."""
    unknown = [name for name in decoders if name not in DECODERS]
    if unknown:
        raise ValueError(f"unknown decoder(s) {unknown}; valid: {', '.join(DECODERS)}")
    D = distance_matrix(taxonomy)
    mean = preds.mean
    out, skipped = {}, {}
    for name in decoders:
        if name == "argmax":
            out[name] = decode_argmax(mean)
        elif name == "vote":
            labels, u = member_labels_and_u(preds.members, sigma=sigma)
            out[name] = vote(labels, u, num_classes=len(taxonomy))[0]
        elif name == "bayes":
            out[name] = decode_bayes(mean, D)
        elif name == "bayes_cal":
            if temperature is None:
                skipped[name] = "no validation predictions to fit a temperature on"
                continue
            out[name] = decode_bayes(apply_temperature(mean, temperature), D)
        elif name in FRAME_DECODERS:
            if frame_prior is None or name not in frame_prior.weights:
                skipped[name] = "no frame prior (it needs labelled validation predictions with frame ids)"
            elif preds.frame_ids is None:
                skipped[name] = "no frame ids for these ROIs"
            else:
                q = frame_aware(mean, preds.frame_ids, frame_prior, name)
                out[name] = decode_bayes(q, D) if name == "frame_bayes" else decode_argmax(q)
        else:  # diffusion
            out[name] = decode_diffusion(mean, taxonomy_graph(taxonomy), alpha)
    return Decoding(out, temperature, skipped)


def fit_validation_temperature(val: EnsemblePredictions | None) -> float | None:
    """Temperature of the ensemble mean fitted on validation NLL, or None without labelled validation."""
    if val is None or val.labels is None or (val.labels < 0).all():
        return None
    keep = val.labels >= 0
    return fit_temperature(val.mean[keep], val.labels[keep])


def ensemble_u(preds: EnsemblePredictions, sigma: str) -> np.ndarray:
    """(N,) U over the members' head means (the ensemble-level certainty used for thresholds)."""
    return gmu(preds.member_means, sigma=sigma)[1]


# ------------------------------------------------------------------------------- saved predictions
class PredictionFileError(ValueError):
    """Members' saved prediction files that cannot make one ensemble (one missing, another class order,
    other annotation ids or test-time views); the message says which file and why."""


def load_predictions(member_dirs: list[Path], split: str, taxonomy: Taxonomy) -> EnsemblePredictions | None:
    """Read `<split>_probs.npz` of every member (split 'test' or 'val'); None when no member has the file."""
    files = [Path(d) / probs_file(split) for d in member_dirs]
    present = [f.is_file() for f in files]
    if not any(present):
        return None
    if not all(present):
        raise PredictionFileError(f"{files[present.index(False)]} is missing while other members have it")
    ids, members, labels, frames, views, member_views, set_scores = None, [], None, None, set(), [], []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            if tuple(z["classes"].tolist()) != taxonomy.names:
                raise PredictionFileError(f"{f}: class order differs from the taxonomy's canonical order")
            probs = z["probs"]
            probs = probs[None] if probs.ndim == 2 else probs
            order = np.argsort(z["annotation_id"], kind="stable")
            these = z["annotation_id"][order]
            if ids is None:
                ids = these
                labels = z["labels"][order].astype(np.int64) if "labels" in z.files else None
                frames = z["image_id"][order].astype(np.int64) if "image_id" in z.files else None  # older files lack it
            elif not np.array_equal(ids, these):
                raise PredictionFileError(f"{f}: annotation ids differ from the first member's (different {split} split?)")
            members.append(probs[:, order].astype(np.float32, copy=False))
            views.add(tuple(z["views"].tolist()) if "views" in z.files else ("identity",))
            if "view_probs" in z.files:
                member_views.append(z["view_probs"][:, :, order])
            if "avgk_scores" in z.files:
                set_scores.append(z["avgk_scores"][order])
    if len(views) > 1:
        raise PredictionFileError(f"the members' {split} predictions were made with different test-time views {sorted(views)}")
    return EnsemblePredictions(ids, members, labels, frames, views.pop(),
                               member_views if len(member_views) == len(files) else None,
                               set_scores if len(set_scores) == len(files) else None)


@dataclass
class RoundPredictions:
    """A round's validation and test predictions (None where the members have none) and the decoders'
    parameters fitted on validation: the temperature of bayes_cal, the frame prior of the frame decoders."""

    val: EnsemblePredictions | None
    test: EnsemblePredictions | None
    temperature: float | None
    frame_prior: FramePrior | None
