"""Inference with trained members outside the training loop (the Kaggle notebook, packaged ensembles, src.predict).

A member is a run folder of src.train (config.yaml + the weights-only model.pt, or checkpoint.pt for runs
trained before model.pt existed) or its packaged copy (config.yaml + model.pt, see src.stages.package).
Prediction goes through the same code as the end of training (crop cache, eval transform, batch size,
channels_last, autocast dtype), so on the same machine the probabilities match the run's test_probs.npz
and the decoded labels match `submit`'s.

    member = load_member("outputs/pipeline/demo/round_2/members/seed_0")
    ids, crops = load_crops("data/dataset_test.json", "work/cache", member.crop_size, member.views,
                            images_dir="data/test/images")
    probs = predict_crops(member, crops)                    # (H, N, C) softmax per head
    preds = predict_ensemble(member_dirs, "data/dataset_test.json", "work/cache", images_dir=...)
    rows = decode_predictions(preds, "bayes", manifest["decoding"])   # annotation_id, concept_name
"""
from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from src.artifacts import atomic_save_npz
from src.config import Config, load_yaml, validate_config
from src.data.coco import annotation_table, frame_ids_of
from src.data.crops import one_or_per_view
from src.decoding import EnsemblePredictions, decode_ensemble
from src.forward import ViewPredictions, amp_dtype, predict_views
from src.run_files import CONFIG_FILE, is_done, weights_file
from src.submission import labels_frame
from src.taxonomy import Taxonomy, load_taxonomy


@dataclass
class Member:
    """One trained model ready to predict, with the config and class order it was trained with."""

    run_dir: Path
    config: Config
    classes: tuple[str, ...]
    model: torch.nn.Module
    device: torch.device

    @property
    def crop_size(self) -> int | tuple[int, ...]:
        """Side of the cached crops the model was fed (data.cache_size, else data.image_size), or one per view
        when data.view_sizes gives the views different sizes."""
        return one_or_per_view(self.config.data.crop_sizes())

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self.config.data.views)


def load_member_config(run_dir: str | Path) -> Config:
    """The member's saved training config, with weight loading switched off (the weights come from the file)."""
    path = Path(run_dir) / CONFIG_FILE
    tree = load_yaml(path)
    tree.setdefault("model", {}).update(pretrained=False, pretrained_path=None)
    return validate_config(Config, tree, source=str(path))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """src.runtime.pick_device: DeviceError (a ValueError) when the device asked for is missing."""
    from src.runtime import pick_device

    return pick_device(device)


def load_member(run_dir: str | Path, taxonomy: Taxonomy | None = None,
                device: str | torch.device = "auto") -> Member:
    """Build a member's model from its saved config and load its weights (eval mode, on `device`).

    ValueError when the weights' class order differs from the taxonomy's canonical order."""
    from src.models import build_model
    from src.serialization import load_state_file

    run_dir = Path(run_dir)
    taxonomy = taxonomy or load_taxonomy()
    cfg = load_member_config(run_dir)
    path = weights_file(run_dir)
    state = load_state_file(path)  # tensors and plain data only: loading never runs code from the file
    classes = tuple(state["classes"])
    if classes != taxonomy.names:
        raise ValueError(f"{path}: class order differs from the taxonomy's canonical order")
    aux_classes = {rank: len(taxonomy.rank_labels(rank)[1]) for rank in cfg.model.aux_ranks}
    model = build_model(cfg, len(classes), aux_classes)
    model.load_state_dict(state["model"])
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if cfg.model.channels_last:  # as in training: the memory format changes the float results slightly
        model = model.to(memory_format=torch.channels_last)
    return Member(run_dir, cfg, classes, model, dev)


def predict_crop_views(member: Member, crops: np.ndarray, batch_size: int | None = None,
                       tta_views=None) -> ViewPredictions:
    """Softmax per test-time view and head (T, H, N, C) float32 of uint8 crops (N, V, S, S, 3) in the member's
    crop views (with data.view_sizes: a tuple of V arrays (N, S_v, S_v, 3), as `load_crops` gives them).
    `tta_views` default to the member's train.tta_views; the batch size to training's evaluation batch size
    (results then match test_probs.npz)."""
    from torch.utils.data import DataLoader

    from src.data.dataset import CropCacheDataset
    from src.data.transforms import build_tta_transform

    cfg = member.config
    per_view = isinstance(crops, (tuple, list))
    shapes = [a.shape for a in crops] if per_view else crops.shape
    n_views = len(crops) if per_view else (crops.shape[1] if crops.ndim == 5 else -1)
    if n_views != len(member.views) or per_view != isinstance(member.crop_size, tuple):
        layout = "a tuple of V arrays (N, S_v, S_v, 3)" if isinstance(member.crop_size, tuple) else "(N, V, S, S, 3)"
        raise ValueError(f"crops must be {layout} for views {member.views} (crop sizes {member.crop_size}), "
                         f"got {shapes}")
    batch_size = batch_size or cfg.train.eval_batch_size or 2 * cfg.train.batch_size
    n = len(crops[0]) if per_view else len(crops)

    def loader_for(view: str):
        dataset = CropCacheDataset(crops, np.full(n, -1), build_tta_transform(cfg.data.input_sizes(), view))
        return DataLoader(dataset, batch_size, shuffle=False)

    return predict_views(member.model, loader_for, tuple(tta_views or cfg.train.tta_views), member.device,
                         amp_dtype(cfg.train.amp, member.device))


def predict_crops(member: Member, crops: np.ndarray, batch_size: int | None = None, tta_views=None) -> np.ndarray:
    """Softmax per head (H, N, C) float32 of uint8 crops, averaged over the test-time views (`predict_crop_views`)."""
    return predict_crop_views(member, crops, batch_size, tta_views).probs


class MissingPixelsError(ValueError):
    """ROIs whose frame or ROI file is missing or undecodable would be predicted from black crops."""


def _refuse_missing_pixels(count: int, total: int, where: str, allow: bool) -> None:
    what = f"{count} of {total} ROIs have no pixels ({where})"
    if not allow:
        raise MissingPixelsError(f"{what}: their predictions would come from black crops; fetch the missing frames "
                                 "(python -m src.data.download) or allow it explicitly (--allow-missing-pixels, "
                                 "ALLOW_MISSING_PIXELS in the notebook)")
    print(f"warning: {what}: predicted from black crops")


def read_roi_files(paths: list[Path], size: int, progress: bool = True, allow_missing: bool = False) -> np.ndarray:
    """(N, 1, size, size, 3) crops squared from ROI image files; MissingPixelsError where a file is missing
    or unreadable, unless `allow_missing` (zeros, with a warning).

    ROI files hold the clipped box pixels (src.data.download), so squaring them gives the cache's
    'roi' view exactly."""
    from src.data.coco import ImageDecodeError, read_rgb
    from src.data.crops import DEFAULT_FILL, fit_square

    out = np.zeros((len(paths), 1, size, size, 3), dtype=np.uint8)
    missing = []
    for i, path in enumerate(tqdm(paths, desc="ROI files", unit="roi", leave=False, disable=not progress)):
        try:
            out[i, 0] = fit_square(read_rgb(path), size, DEFAULT_FILL)
        except ImageDecodeError:
            missing.append(Path(path).name)
    if missing:
        _refuse_missing_pixels(len(missing), len(paths), f"ROI files missing or unreadable, e.g. {missing[:3]}",
                               allow_missing)
    return out


def load_crops(coco_json: str | Path, cache_dir: str | Path, size: int | tuple[int, ...], views=("roi",),
               images_dir: str | Path | None = None, rois_dir: str | Path | None = None,
               taxonomy: Taxonomy | None = None, progress: bool = True,
               allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray | tuple[np.ndarray, ...]]:
    """(annotation_id (N,), crops (N, V, size, size, 3)) of every annotation of a COCO file, in id order; with
    one size per view (`size` a tuple), crops is a tuple of V arrays (N, S_v, S_v, 3).

    From the frames in `images_dir` through the project's crop cache (built under `cache_dir`, any view);
    else from ROI files in `rois_dir` (view 'roi' only). MissingPixelsError when a frame or ROI file is
    missing or undecodable, unless `allow_missing` (its ROIs then get black crops, with a warning)."""
    from src.data.coco import load_coco

    views = tuple(views)
    if images_dir is not None and Path(images_dir).is_dir() and any(Path(images_dir).iterdir()):
        from src.data.cache import load_or_build_crop_cache

        cache = load_or_build_crop_cache(coco_json, images_dir, cache_dir, size, views=views, taxonomy=taxonomy,
                                         progress=progress)
        no_pixels = int((~cache.has_pixels).sum())
        if no_pixels:
            _refuse_missing_pixels(no_pixels, len(cache), f"frames missing or undecodable: {cache.path}/index.csv",
                                   allow_missing)
        bad = int((cache.has_pixels & ~cache.good).sum())
        if bad:
            print(f"warning: {bad} of {len(cache)} ROIs have a bad box (see {cache.path}/index.csv)")
        crops = tuple(map(np.asarray, cache.crops)) if isinstance(cache.crops, tuple) else np.asarray(cache.crops)
        return cache.index["annotation_id"].to_numpy(np.int64), crops
    if rois_dir is not None and Path(rois_dir).is_dir():
        if views != ("roi",):
            raise ValueError(f"views {views} need the frames (images_dir); ROI files only give the 'roi' view")
        annotations = load_coco(coco_json).annotations
        ids = np.array([int(a["id"]) for a in annotations], dtype=np.int64)
        paths = [Path(rois_dir) / f"{a['image_id']}_{a['id']}.png" for a in annotations]
        return ids, read_roi_files(paths, size, progress, allow_missing)
    raise FileNotFoundError(f"no test images: neither frames in {images_dir} nor ROI files in {rois_dir}")


def predict_members(member_dirs, crops_for: Callable[[int | tuple[int, ...], tuple[str, ...]], tuple[np.ndarray, Any]],
                    device: str | torch.device = "auto", batch_size: int | None = None,
                    taxonomy: Taxonomy | None = None, progress: bool = True, tta_views=None) -> EnsemblePredictions:
    """Every member's per-head probabilities on the crops `crops_for(size, views)` gives as (ids, crops) (size:
    one crop size, or one per view; crops as `load_crops` gives them), aligned and sorted by id, averaged over
    the test-time views (`tta_views`, default each member's train.tta_views, which must then agree), with the
    set head's scores when every member has one.

    Crops are made once per distinct (crop size, views) among the members. Models are loaded one at a
    time, so memory holds a single member."""
    taxonomy = taxonomy or load_taxonomy()
    member_dirs = [Path(d) for d in member_dirs]
    if not member_dirs:
        raise ValueError("no members given")
    groups: dict[tuple, list[int]] = defaultdict(list)
    tta = set()
    for i, d in enumerate(member_dirs):
        cfg = load_member_config(d)
        groups[(one_or_per_view(cfg.data.crop_sizes()), tuple(cfg.data.views))].append(i)
        tta.add(tuple(tta_views or cfg.train.tta_views))
    if len(tta) > 1:
        raise ValueError(f"the members were trained with different train.tta_views {sorted(tta)}: pass one list")
    tta_views = tta.pop()
    ids, preds = None, [None] * len(member_dirs)
    for (size, views), indices in groups.items():
        these, crops = crops_for(size, views)
        if ids is not None and not np.array_equal(ids, these):
            raise ValueError("crop sets of different sizes/views list different annotation ids")
        ids = these
        sizes = size if isinstance(size, int) else "/".join(map(str, size))
        for i in tqdm(indices, desc=f"members ({sizes}px {'+'.join(views)})", disable=not progress):
            member = load_member(member_dirs[i], taxonomy, device)
            preds[i] = predict_crop_views(member, crops, batch_size, tta_views)
            del member
    order = np.argsort(ids, kind="stable")
    scores = [p.avgk_scores[order] for p in preds if p.avgk_scores is not None]
    return EnsemblePredictions.from_views(ids[order], [p.view_probs[:, :, order] for p in preds], tta_views,
                                          set_scores=scores if len(scores) == len(preds) else None)


def predict_ensemble(member_dirs, coco_json: str | Path, cache_dir: str | Path,
                     images_dir: str | Path | None = None, rois_dir: str | Path | None = None,
                     device: str | torch.device = "auto", batch_size: int | None = None,
                     taxonomy: Taxonomy | None = None, progress: bool = True, allow_missing_pixels: bool = False,
                     tta_views=None) -> EnsemblePredictions:
    """Every member's per-head probabilities on the annotations of a COCO file (see `load_crops`), with the
    ROIs' frame ids from the file (for the frame decoders)."""
    taxonomy = taxonomy or load_taxonomy()
    preds = predict_members(
        member_dirs, lambda size, views: load_crops(coco_json, cache_dir, size, views, images_dir, rois_dir,
                                                    taxonomy, progress, allow_missing_pixels),
        device, batch_size, taxonomy, progress, tta_views)
    preds.frame_ids = frame_ids_of(annotation_table(coco_json), preds.annotation_id)
    return preds


def save_ensemble_probs(path: str | Path, preds: EnsemblePredictions, classes, **extra) -> Path:
    """npz of an ensemble's predictions: annotation_id, member_means (M, N, C) (each member's mean over heads
    and test-time views), classes, `extra` arrays; with several views also views (T,) and view_means
    (M, T, N, C) (each member's mean over heads, per view); image_id (N,) when the frames are known."""
    arrays = {"annotation_id": preds.annotation_id, "member_means": preds.member_means, "classes": np.array(classes),
              **extra}
    if preds.member_views is not None:
        arrays.update(views=np.array(preds.views), view_means=np.stack([v.mean(axis=1) for v in preds.member_views]))
    if preds.frame_ids is not None:
        arrays["image_id"] = preds.frame_ids
    return atomic_save_npz(path, **arrays)


def decode_predictions(preds: EnsemblePredictions, decoder: str, decoding: dict,
                       taxonomy: Taxonomy | None = None) -> pd.DataFrame:
    """Submission rows (annotation_id, concept_name) of one decoder, decoded exactly as `submit` does.

    `decoding` holds sigma, diffusion_alpha, temperature and frame_prior (`src.manifest.package_decoding`
    of a package)."""
    taxonomy = taxonomy or load_taxonomy()
    decoded = decode_ensemble(preds, [decoder], taxonomy, decoding["sigma"], decoding["diffusion_alpha"],
                              decoding.get("temperature"), decoding.get("frame_prior"))
    if decoder in decoded.skipped:
        raise ValueError(f"decoder {decoder!r} cannot run: {decoded.skipped[decoder]}")
    return labels_frame(preds.annotation_id, decoded.labels[decoder], taxonomy)


def find_members(model: str | Path) -> list[Path]:
    """Member folders of MODEL: a Kaggle package (manifest.json here or one level down), a finished training
    run, a pipeline round (round_<r>/members/seed_<s>) or a pipeline run (its last round with every member
    finished)."""
    from src.manifest import MANIFEST, read_package

    model = Path(model)
    if not model.is_dir():
        raise FileNotFoundError(f"model {model}: no such folder")
    if (model / MANIFEST).is_file():
        root, manifest = read_package(model)
        return [root / entry["dir"] for entry in manifest["members"]]
    if (model / CONFIG_FILE).is_file():
        if not is_done(model):  # a run in progress has a model.pt too
            raise FileNotFoundError(f"{model}: the run is not finished (no done.json)")
        return [model]
    if (model / "members").is_dir():
        members = _round_members(model)
        unfinished = [d.name for d in members if not is_done(d)]
        if not members or unfinished:
            raise FileNotFoundError(f"{model}: the round is not finished ({', '.join(unfinished) or 'no members'}"
                                    f"{_configured_note(model.parent)})")
        return members
    rounds = sorted((d for d in model.glob("round_*") if d.name[6:].isdigit()), key=lambda d: int(d.name[6:]))
    for round_dir in reversed(rounds):
        members = _round_members(round_dir)
        if members and all(is_done(d) for d in members):
            return members
        print(f"note: {round_dir} is not finished: using an earlier round", file=sys.stderr)
    if rounds:
        raise FileNotFoundError(f"{model}: no round has all its members finished")
    root, manifest = read_package(model)  # a package nested one level down; else FileNotFoundError
    return [root / entry["dir"] for entry in manifest["members"]]


def _round_members(round_dir: Path) -> list[Path]:
    """A round's member folders: one per seed of the run's pipeline.yaml (whether its folder exists or not:
    a missing one is an unfinished member), else (a round copied without its run) the seed_* folders present."""
    seeds = _configured_seeds(round_dir.parent)
    if seeds is not None:
        return [round_dir / "members" / f"seed_{s}" for s in seeds]
    members = [d for d in (round_dir / "members").glob("seed_*") if d.name[5:].isdigit()]
    return sorted(members, key=lambda d: int(d.name[5:]))


def _configured_seeds(run_root: Path) -> list[int] | None:
    """The seeds of a pipeline run (its pipeline.yaml, written by src.stages.pipeline); None without one."""
    import yaml

    try:
        seeds = yaml.safe_load((run_root / "pipeline.yaml").read_text()).get("seeds")
    except (OSError, AttributeError, yaml.YAMLError):
        return None
    return [int(s) for s in seeds] if isinstance(seeds, list) and seeds else None


def _configured_note(run_root: Path) -> str:
    seeds = _configured_seeds(run_root)
    return f"; the run's pipeline.yaml configures seeds {seeds}" if seeds is not None else ""
