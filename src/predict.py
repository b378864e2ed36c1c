"""Predict with trained members outside the training loop (the Kaggle notebook, packaged ensembles).

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

The command line predicts every ROI of a COCO file or a folder of ROI images with a run, a pipeline round
or a package, and writes per ROI the concept, the Bayes concept and per rank the most probable taxon with
its probability (see --help):

    python -m src.predict outputs/pipeline/demo/round_2 inputs/synthetic/demo/dataset_test.json --out preds.csv
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from src.artifacts import atomic_save_npz, atomic_write_with
from src.checkpoint import CHECKPOINT_FILE, WEIGHTS_FILE
from src.config import Config, load_yaml, validate_config
from src.data.coco import annotation_table, frame_ids_of
from src.ensemble import (
    DECODERS, DIFFUSION_ALPHA, FRAME_DECODERS, SIGMA_CONVENTIONS, EnsemblePredictions, decode_bayes, decode_ensemble,
    expected_distance, mean_over_views, taxon_probabilities,
)
from src.submission import labels_frame
from src.taxonomy import RANKS, Taxonomy, load_taxonomy

MODEL_FILE = WEIGHTS_FILE  # weights only: written by training every epoch and by src.stages.package


# ------------------------------------------------------------------------ forward passes and artefacts
def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.amp on this device (None: full precision; CPU always runs float32)."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, loader, device: torch.device, dtype) -> dict[str, np.ndarray]:
    """{'logits': (H, N, C) float32} of every item of the loader, in order, plus 'avgk': (N, C) the average-K
    set head's logits when the model has that head."""
    model.eval()
    chunks, set_chunks = [], []
    for x, _ in loader:
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            out = model(x.to(device, non_blocking=True))
            chunks.append(out["logits"].float().cpu())
            if "avgk" in out:
                set_chunks.append(out["avgk"].float().cpu())
    outputs = {"logits": torch.cat(chunks, dim=1).numpy()}
    if set_chunks:
        outputs["avgk"] = torch.cat(set_chunks).numpy()
    return outputs


def predict_logits(model: torch.nn.Module, loader, device: torch.device, dtype) -> np.ndarray:
    """Logits (H, N, C) float32 of every item of the loader, in order."""
    return predict_outputs(model, loader, device, dtype)["logits"]


def softmax_np(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32 (computed by torch, as in training)."""
    return torch.from_numpy(logits).softmax(dim=-1).numpy().astype(np.float32)


@dataclass
class ViewPredictions:
    """One model's predictions on one split under T test-time views (src.data.transforms.parse_tta_view)."""

    views: tuple[str, ...]
    view_probs: np.ndarray  # (T, H, N, C) float32 softmax per view and head
    avgk_scores: np.ndarray | None  # (N, C) sigmoid of the average-K set head, mean over the views

    @property
    def probs(self) -> np.ndarray:
        """(H, N, C) the mean over the views (`src.ensemble.mean_over_views`)."""
        return mean_over_views(self.view_probs)

    def npz_arrays(self) -> dict[str, np.ndarray]:
        """What <split>_probs.npz holds beside probs: view_probs and views when there are several views,
        avgk_scores with the set head (nothing for one identity view without it: the old layout)."""
        arrays = {}
        if len(self.views) > 1:
            arrays.update(view_probs=self.view_probs, views=np.array(self.views))
        if self.avgk_scores is not None:
            arrays["avgk_scores"] = self.avgk_scores
        return arrays


def predict_views(model: torch.nn.Module, loader_for: Callable[[str], object], views, device: torch.device,
                  dtype) -> ViewPredictions:
    """Softmax per head of every test-time view; `loader_for(view)` is the in-order loader of that view."""
    probs, scores = [], []
    for view in views:
        out = predict_outputs(model, loader_for(view), device, dtype)
        probs.append(softmax_np(out["logits"]))
        if "avgk" in out:
            scores.append(torch.from_numpy(out["avgk"]).sigmoid().numpy())
    avgk = mean_over_views(np.stack(scores)[:, None])[0] if scores else None
    return ViewPredictions(tuple(views), np.stack(probs), avgk)


def write_predictions(run_dir: Path, stem: str, annotation_ids: np.ndarray, probs: np.ndarray,
                      classes: tuple[str, ...], D: np.ndarray, decode: str, labels: np.ndarray | None = None,
                      extra: dict[str, np.ndarray] | None = None):
    """<stem>_probs.npz (probs (H, N, C) per head, then `extra` arrays) and the predictions CSV of the
    head-mean; returns the labels."""
    arrays = {"annotation_id": annotation_ids.astype(np.int64), "probs": probs, "classes": np.array(classes)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    arrays.update(extra or {})
    atomic_save_npz(run_dir / f"{stem}_probs.npz", **arrays)
    mean = probs.mean(axis=0)
    pred = decode_bayes(mean, D) if decode == "bayes" else mean.argmax(axis=1)
    table = pd.DataFrame({"annotation_id": annotation_ids.astype(np.int64),
                          "concept_name": np.array(classes)[pred],
                          "confidence": mean[np.arange(len(pred)), pred]})
    name = "predictions.csv" if stem == "test" else f"{stem}_predictions.csv"
    atomic_write_with(run_dir / name, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    return pred


# ------------------------------------------------------------------------------------ trained members


@dataclass
class Member:
    """One trained model ready to predict, with the config and class order it was trained with."""

    run_dir: Path
    config: Config
    classes: tuple[str, ...]
    model: torch.nn.Module
    device: torch.device

    @property
    def crop_size(self) -> int:
        """Side of the cached crops the model was fed (data.cache_size, else data.image_size)."""
        return self.config.data.cache_size or self.config.data.image_size

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self.config.data.views)


def weights_file(run_dir: str | Path) -> Path:
    """The weights-only model.pt when present (a run folder's or a packaged member's), else checkpoint.pt."""
    run_dir = Path(run_dir)
    for name in (MODEL_FILE, CHECKPOINT_FILE):
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"{run_dir}: neither {MODEL_FILE} nor {CHECKPOINT_FILE} found (not a trained member)")


def load_member_config(run_dir: str | Path) -> Config:
    """The member's saved training config, with weight loading switched off (the weights come from the file)."""
    path = Path(run_dir) / "config.yaml"
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
    crop views. `tta_views` default to the member's train.tta_views; the batch size to training's evaluation
    batch size (results then match test_probs.npz)."""
    from torch.utils.data import DataLoader

    from src.data.dataset import CropCacheDataset
    from src.data.transforms import build_tta_transform

    cfg = member.config
    if crops.ndim != 5 or crops.shape[1] != len(member.views):
        raise ValueError(f"crops must be (N, {len(member.views)}, S, S, 3) for views {member.views}, got {crops.shape}")
    batch_size = batch_size or cfg.train.eval_batch_size or 2 * cfg.train.batch_size

    def loader_for(view: str):
        dataset = CropCacheDataset(crops, np.full(len(crops), -1), build_tta_transform(cfg.data.image_size, view))
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


def load_crops(coco_json: str | Path, cache_dir: str | Path, size: int, views=("roi",),
               images_dir: str | Path | None = None, rois_dir: str | Path | None = None,
               taxonomy: Taxonomy | None = None, progress: bool = True,
               allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(annotation_id (N,), crops (N, V, size, size, 3)) of every annotation of a COCO file, in id order.

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
        return cache.index["annotation_id"].to_numpy(np.int64), np.asarray(cache.crops)
    if rois_dir is not None and Path(rois_dir).is_dir():
        if views != ("roi",):
            raise ValueError(f"views {views} need the frames (images_dir); ROI files only give the 'roi' view")
        annotations = load_coco(coco_json).annotations
        ids = np.array([int(a["id"]) for a in annotations], dtype=np.int64)
        paths = [Path(rois_dir) / f"{a['image_id']}_{a['id']}.png" for a in annotations]
        return ids, read_roi_files(paths, size, progress, allow_missing)
    raise FileNotFoundError(f"no test images: neither frames in {images_dir} nor ROI files in {rois_dir}")


def predict_members(member_dirs, crops_for: Callable[[int, tuple[str, ...]], tuple[np.ndarray, np.ndarray]],
                    device: str | torch.device = "auto", batch_size: int | None = None,
                    taxonomy: Taxonomy | None = None, progress: bool = True, tta_views=None) -> EnsemblePredictions:
    """Every member's per-head probabilities on the crops `crops_for(size, views)` gives as (ids, crops),
    aligned and sorted by id, averaged over the test-time views (`tta_views`, default each member's
    train.tta_views, which must then agree), with the set head's scores when every member has one.

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
        groups[(cfg.data.cache_size or cfg.data.image_size, tuple(cfg.data.views))].append(i)
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
        for i in tqdm(indices, desc=f"members ({size}px {'+'.join(views)})", disable=not progress):
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


# ------------------------------------------------------------------------------ the command line
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RANK_COLUMNS = RANKS[1:]  # phylum .. species (every concept is an animal)


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
    if (model / "config.yaml").is_file():
        if not (model / "done.json").is_file():  # a run in progress has a model.pt too
            raise FileNotFoundError(f"{model}: the run is not finished (no done.json)")
        return [model]
    if (model / "members").is_dir():
        members = _round_members(model)
        unfinished = [d.name for d in members if not (d / "done.json").is_file()]
        if not members or unfinished:
            raise FileNotFoundError(f"{model}: the round is not finished ({', '.join(unfinished) or 'no members'}"
                                    f"{_configured_note(model.parent)})")
        return members
    rounds = sorted((d for d in model.glob("round_*") if d.name[6:].isdigit()), key=lambda d: int(d.name[6:]))
    for round_dir in reversed(rounds):
        members = _round_members(round_dir)
        if members and all((d / "done.json").is_file() for d in members):
            return members
        import sys
        print(f"note: {round_dir} is not finished: using an earlier round", file=sys.stderr)
    if rounds:
        raise FileNotFoundError(f"{model}: no round has all its members finished")
    root, manifest = read_package(model)  # a package nested one level down; else FileNotFoundError
    return [root / entry["dir"] for entry in manifest["members"]]


def _cli_decoding(model: Path, decoder: str | None) -> dict:
    """The decoding parameters for --decoder: a package's (fitted when packaging), else the defaults of the
    decoders that need no fitting."""
    from src.manifest import MANIFEST, package_decoding, read_package

    if decoder is None:
        return {}
    trained_here = (model / "config.yaml").is_file() or (model / "members").is_dir() or any(model.glob("round_*"))
    if (model / MANIFEST).is_file() or not trained_here:  # a package, as find_members reads it
        return package_decoding(*read_package(model))
    if decoder == "bayes_cal" or decoder in FRAME_DECODERS:
        raise ValueError(f"--decoder {decoder} needs parameters fitted on validation: package the ensemble "
                         "(python -m src.stages.package) and predict with the package")
    return {"sigma": SIGMA_CONVENTIONS[0], "diffusion_alpha": DIFFUSION_ALPHA}


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


def prediction_table(probs: np.ndarray, taxonomy: Taxonomy, D: np.ndarray, confidence: float = 0.9) -> pd.DataFrame:
    """Per ROI, from ensemble probabilities (N, C): the concept and its probability, the Bayes concept
    (least expected distance) and that distance, per rank phylum..species the most probable taxon and its
    probability (the sum over the concepts under it), and the deepest rank whose taxon reaches `confidence`."""
    if not 0.5 < confidence <= 1:
        raise ValueError(f"confidence must be in (0.5, 1] (then the sure taxa form one lineage), got {confidence}")
    names = np.asarray(taxonomy.names, dtype=object)
    concept = probs.argmax(axis=1)
    risk = expected_distance(probs, D)
    bayes = risk.argmin(axis=1)
    rows = np.arange(len(probs))
    table = {"concept": names[concept], "probability": probs[rows, concept],
             "bayes_concept": names[bayes], "bayes_expected_distance": risk[rows, bayes]}
    deepest_rank = np.full(len(probs), "", dtype=object)
    deepest_taxon = np.full(len(probs), "", dtype=object)
    for rank in RANK_COLUMNS:
        best, p, taxa = taxon_probabilities(probs, taxonomy, rank)
        label = np.asarray(taxa, dtype=object)[best]
        table[rank], table[f"{rank}_probability"] = label, p
        sure = p >= confidence
        deepest_rank[sure], deepest_taxon[sure] = rank, label[sure]
    table["deepest_sure_rank"], table["deepest_sure_taxon"] = deepest_rank, deepest_taxon
    return pd.DataFrame(table)


def _coco_crops(coco_json: Path, images: Path | None, work: Path, taxonomy: Taxonomy, progress: bool,
                allow_missing: bool = False):
    """A (size, views) -> (ids, crops) source over a COCO file's frames; frames not found locally are
    downloaded from their coco_url into WORK/images."""
    if images is None:
        split = coco_json.stem.removeprefix("dataset_")
        images = coco_json.parent / split / "images"
    if not images.is_dir() or not any(images.iterdir()):
        from src.data.download import download_split

        print(f"frames not found locally: fetching them from their coco_url into {work / 'images'}")
        if download_split(coco_json, work, progress=progress) != 0:
            print(f"warning: some frames could not be fetched; see {work / 'failures.csv'}")
        images = work / "images"
    return lambda size, views: load_crops(coco_json, work / "cache", size, views, images_dir=images,
                                          taxonomy=taxonomy, progress=progress, allow_missing=allow_missing)


def _folder_crops(folder: Path, progress: bool, allow_missing: bool = False):
    """A (size, views) -> (file names, crops) source over the ROI images of a folder (view 'roi' only)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{folder}: no ROI images ({', '.join(IMAGE_SUFFIXES)})")

    def crops_for(size: int, views: tuple[str, ...]):
        if views != ("roi",):
            raise ValueError(f"a member uses the views {views}: a folder of ROI images gives only 'roi' "
                             "(pass the COCO file with the frames instead)")
        return np.array([p.name for p in paths], dtype=object), read_roi_files(paths, size, progress, allow_missing)

    return crops_for


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from src.taxonomy import distance_matrix

    parser = argparse.ArgumentParser(
        prog="python -m src.predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict the taxon of every ROI with a trained model or ensemble, with per-rank probabilities.",
        epilog="MODEL: a finished training run (outputs/runs/NAME), a pipeline round "
               "(outputs/pipeline/NAME/round_R) or run (its last finished round), or a Kaggle package "
               "(src.stages.package).\nINPUT: a COCO file (frames from --images, else DIR/<split>/images beside it, "
               "else fetched from their coco_url) or a folder of ROI images (one ROI per file; 'roi'-view models).\n"
               "Output columns: annotation_id (COCO) or file (folder); concept, probability (argmax of the ensemble "
               "mean); bayes_concept, bayes_expected_distance (the label of least expected distance); per rank "
               "phylum..species the most probable taxon and its probability (the sum over its concepts); "
               "deepest_sure_rank/taxon: the deepest rank whose probability reaches --confidence; with --decoder D, "
               "D_concept: the label of that decoder (as submit and the Kaggle notebook decode). Members are "
               "averaged over their test-time views (--tta).")
    parser.add_argument("model", help="run folder, pipeline round or run folder, or package folder")
    parser.add_argument("input", help="COCO JSON file or folder of ROI images")
    parser.add_argument("--out", required=True, help="CSV to write (atomically)")
    parser.add_argument("--images", default=None, help="folder of the COCO file's frames")
    parser.add_argument("--work", default="outputs/predict", help="crop cache and fetched frames (default %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.9, help="probability of a 'sure' rank (default 0.9)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each member's evaluation batch size")
    parser.add_argument("--tta", default=None, help="test-time views to average, comma-separated: identity, hflip, "
                        "down<NN>, hflip_down<NN> (default: the views each member was trained with, train.tta_views)")
    parser.add_argument("--decoder", default=None, choices=DECODERS,
                        help="also write the column <decoder>_concept: the label `submit` would give. bayes_cal "
                             "and the frame decoders need a package (their parameters are fitted when packaging); "
                             "the frame decoders also a COCO input (frames)")
    parser.add_argument("--probs", default=None, help="also save the members' probabilities (npz: member_means, "
                        "and per test-time view view_means when there are several views)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--allow-missing-pixels", action="store_true",
                        help="predict ROIs whose frame or ROI file is missing or undecodable from black crops "
                             "(default: stop with an error naming them)")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    try:
        if not 0.5 < args.confidence <= 1:
            raise ValueError(f"--confidence must be in (0.5, 1], got {args.confidence}")
        from src.artifacts import check_output_path  # before any prediction: never replace an input or artefact
        inputs = (args.model, args.input, args.images, args.work)
        check_output_path(args.out, (*inputs, args.probs))
        if args.probs:
            check_output_path(args.probs, (*inputs, args.out), "--probs", allow_suffixes=(".npz",))
        tta = None
        if args.tta:
            from src.data.transforms import parse_tta_view

            tta = tuple(view.strip() for view in args.tta.split(","))
            for view in tta:
                parse_tta_view(view)
        resolve_device(args.device)  # a missing device stops before any work
        taxonomy = load_taxonomy()
        members = find_members(args.model)
        decoding = _cli_decoding(Path(args.model), args.decoder)
        source = Path(args.input)
        if source.is_dir():
            crops_for, id_column = _folder_crops(source, progress, args.allow_missing_pixels), "file"
        elif source.is_file():
            images = Path(args.images) if args.images else None
            crops_for, id_column = (_coco_crops(source, images, Path(args.work), taxonomy, progress,
                                                args.allow_missing_pixels), "annotation_id")
        else:
            raise FileNotFoundError(f"input {source}: no such file or folder")
        preds = predict_members(members, crops_for, args.device, args.batch_size, taxonomy, progress, tta)
        if id_column == "annotation_id":
            preds.frame_ids = frame_ids_of(annotation_table(source), preds.annotation_id)
        decoded = decode_predictions(preds, args.decoder, decoding, taxonomy) if args.decoder else None
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = prediction_table(preds.mean, taxonomy, distance_matrix(taxonomy), args.confidence)
    table.insert(0, id_column, preds.annotation_id)
    if decoded is not None:
        table.insert(1, f"{args.decoder}_concept", decoded["concept_name"].to_numpy())
    if args.probs:
        save_ensemble_probs(args.probs, preds, taxonomy.names)
    atomic_write_with(Path(args.out), lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    sure = table["deepest_sure_rank"].value_counts().reindex([*RANK_COLUMNS, ""], fill_value=0)
    counts = ", ".join(f"{rank or 'none'} {n}" for rank, n in sure.items())
    print(f"{len(table)} ROIs, {len(members)} member(s) -> {args.out}; deepest rank with p >= {args.confidence}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
