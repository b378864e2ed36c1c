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
from src.ensemble import EnsemblePredictions, decode_bayes, decode_ensemble, expected_distance, taxon_probabilities
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
def predict_logits(model: torch.nn.Module, loader, device: torch.device, dtype) -> np.ndarray:
    """Logits (H, N, C) float32 of every item of the loader, in order."""
    model.eval()
    chunks = []
    for x, _ in loader:
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            chunks.append(model(x.to(device, non_blocking=True))["logits"].float().cpu())
    return torch.cat(chunks, dim=1).numpy()


def softmax_np(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32 (computed by torch, as in training)."""
    return torch.from_numpy(logits).softmax(dim=-1).numpy().astype(np.float32)


def write_predictions(run_dir: Path, stem: str, annotation_ids: np.ndarray, probs: np.ndarray,
                      classes: tuple[str, ...], D: np.ndarray, decode: str, labels: np.ndarray | None = None):
    """<stem>_probs.npz (probs (H, N, C) per head) and the predictions CSV of the head-mean; returns the labels."""
    arrays = {"annotation_id": annotation_ids.astype(np.int64), "probs": probs, "classes": np.array(classes)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
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
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_member(run_dir: str | Path, taxonomy: Taxonomy | None = None,
                device: str | torch.device = "auto") -> Member:
    """Build a member's model from its saved config and load its weights (eval mode, on `device`).

    ValueError when the weights' class order differs from the taxonomy's canonical order."""
    from src.models import build_model

    run_dir = Path(run_dir)
    taxonomy = taxonomy or load_taxonomy()
    cfg = load_member_config(run_dir)
    path = weights_file(run_dir)
    state = torch.load(path, map_location="cpu", weights_only=False)
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


def predict_crops(member: Member, crops: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Softmax per head (H, N, C) float32 of uint8 crops (N, V, S, S, 3) in the member's views.

    The batch size defaults to training's evaluation batch size (results then match test_probs.npz)."""
    from torch.utils.data import DataLoader

    from src.data.dataset import CropCacheDataset
    from src.data.transforms import build_eval_transform

    cfg = member.config
    if crops.ndim != 5 or crops.shape[1] != len(member.views):
        raise ValueError(f"crops must be (N, {len(member.views)}, S, S, 3) for views {member.views}, got {crops.shape}")
    dataset = CropCacheDataset(crops, np.full(len(crops), -1), build_eval_transform(cfg.data.image_size))
    loader = DataLoader(dataset, batch_size or cfg.train.eval_batch_size or 2 * cfg.train.batch_size, shuffle=False)
    return softmax_np(predict_logits(member.model, loader, member.device, amp_dtype(cfg.train.amp, member.device)))


def read_roi_files(paths: list[Path], size: int, progress: bool = True) -> np.ndarray:
    """(N, 1, size, size, 3) crops squared from ROI image files (zeros, with a warning, where unreadable).

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
        print(f"warning: {len(missing)} ROI files missing or unreadable (zeros used), e.g. {missing[:5]}")
    return out


def load_crops(coco_json: str | Path, cache_dir: str | Path, size: int, views=("roi",),
               images_dir: str | Path | None = None, rois_dir: str | Path | None = None,
               taxonomy: Taxonomy | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(annotation_id (N,), crops (N, V, size, size, 3)) of every annotation of a COCO file, in id order.

    From the frames in `images_dir` through the project's crop cache (built under `cache_dir`, any view);
    else from ROI files in `rois_dir` (view 'roi' only)."""
    from src.data.coco import load_coco

    views = tuple(views)
    if images_dir is not None and Path(images_dir).is_dir() and any(Path(images_dir).iterdir()):
        from src.data.cache import load_or_build_crop_cache

        cache = load_or_build_crop_cache(coco_json, images_dir, cache_dir, size, views=views, taxonomy=taxonomy,
                                         progress=progress)
        bad = int((~cache.good).sum())
        if bad:
            print(f"warning: {bad} of {len(cache)} crops have problems (missing frames?): see {cache.path}/index.csv")
        return cache.index["annotation_id"].to_numpy(np.int64), np.asarray(cache.crops)
    if rois_dir is not None and Path(rois_dir).is_dir():
        if views != ("roi",):
            raise ValueError(f"views {views} need the frames (images_dir); ROI files only give the 'roi' view")
        annotations = load_coco(coco_json).annotations
        ids = np.array([int(a["id"]) for a in annotations], dtype=np.int64)
        paths = [Path(rois_dir) / f"{a['image_id']}_{a['id']}.png" for a in annotations]
        return ids, read_roi_files(paths, size, progress)
    raise FileNotFoundError(f"no test images: neither frames in {images_dir} nor ROI files in {rois_dir}")


def predict_members(member_dirs, crops_for: Callable[[int, tuple[str, ...]], tuple[np.ndarray, np.ndarray]],
                    device: str | torch.device = "auto", batch_size: int | None = None,
                    taxonomy: Taxonomy | None = None, progress: bool = True) -> EnsemblePredictions:
    """Every member's per-head probabilities on the crops `crops_for(size, views)` gives as (ids, crops),
    aligned and sorted by id.

    Crops are made once per distinct (crop size, views) among the members. Models are loaded one at a
    time, so memory holds a single member."""
    taxonomy = taxonomy or load_taxonomy()
    member_dirs = [Path(d) for d in member_dirs]
    if not member_dirs:
        raise ValueError("no members given")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, d in enumerate(member_dirs):
        cfg = load_member_config(d)
        groups[(cfg.data.cache_size or cfg.data.image_size, tuple(cfg.data.views))].append(i)
    ids, probs = None, [None] * len(member_dirs)
    for (size, views), indices in groups.items():
        these, crops = crops_for(size, views)
        if ids is not None and not np.array_equal(ids, these):
            raise ValueError("crop sets of different sizes/views list different annotation ids")
        ids = these
        for i in tqdm(indices, desc=f"members ({size}px {'+'.join(views)})", disable=not progress):
            member = load_member(member_dirs[i], taxonomy, device)
            probs[i] = predict_crops(member, crops, batch_size)
            del member
    order = np.argsort(ids, kind="stable")
    return EnsemblePredictions(ids[order], [p[:, order] for p in probs], None)


def predict_ensemble(member_dirs, coco_json: str | Path, cache_dir: str | Path,
                     images_dir: str | Path | None = None, rois_dir: str | Path | None = None,
                     device: str | torch.device = "auto", batch_size: int | None = None,
                     taxonomy: Taxonomy | None = None, progress: bool = True) -> EnsemblePredictions:
    """Every member's per-head probabilities on the annotations of a COCO file (see `load_crops`)."""
    taxonomy = taxonomy or load_taxonomy()
    return predict_members(
        member_dirs, lambda size, views: load_crops(coco_json, cache_dir, size, views, images_dir, rois_dir,
                                                    taxonomy, progress),
        device, batch_size, taxonomy, progress)


def decode_predictions(preds: EnsemblePredictions, decoder: str, decoding: dict,
                       taxonomy: Taxonomy | None = None) -> pd.DataFrame:
    """Submission rows (annotation_id, concept_name) of one decoder, decoded exactly as `submit` does.

    `decoding` holds sigma, diffusion_alpha and temperature (a package manifest's "decoding")."""
    taxonomy = taxonomy or load_taxonomy()
    decoded = decode_ensemble(preds, [decoder], taxonomy, decoding["sigma"], decoding["diffusion_alpha"],
                              decoding.get("temperature"))
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
            raise FileNotFoundError(f"{model}: the round is not finished ({', '.join(unfinished) or 'no members'})")
        return members
    rounds = sorted((d for d in model.glob("round_*") if d.name[6:].isdigit()), key=lambda d: int(d.name[6:]))
    for round_dir in reversed(rounds):
        members = _round_members(round_dir)
        if members and all((d / "done.json").is_file() for d in members):
            return members
    if rounds:
        raise FileNotFoundError(f"{model}: no round has all its members finished")
    root, manifest = read_package(model)  # a package nested one level down; else FileNotFoundError
    return [root / entry["dir"] for entry in manifest["members"]]


def _round_members(round_dir: Path) -> list[Path]:
    members = [d for d in (round_dir / "members").glob("seed_*") if d.name[5:].isdigit()]
    return sorted(members, key=lambda d: int(d.name[5:]))


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


def _coco_crops(coco_json: Path, images: Path | None, work: Path, taxonomy: Taxonomy, progress: bool):
    """A (size, views) -> (ids, crops) source over a COCO file's frames; frames not found locally are
    downloaded from their coco_url into WORK/images."""
    if images is None:
        split = coco_json.stem.removeprefix("dataset_")
        images = coco_json.parent / split / "images"
    if not images.is_dir() or not any(images.iterdir()):
        from src.data.download import download_split

        print(f"frames not found locally: fetching them from their coco_url into {work / 'images'}")
        if download_split(coco_json, work, progress=progress) != 0:
            print(f"warning: some frames could not be fetched (their ROIs get zero crops); see {work / 'failures.csv'}")
        images = work / "images"
    return lambda size, views: load_crops(coco_json, work / "cache", size, views, images_dir=images,
                                          taxonomy=taxonomy, progress=progress)


def _folder_crops(folder: Path, progress: bool):
    """A (size, views) -> (file names, crops) source over the ROI images of a folder (view 'roi' only)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{folder}: no ROI images ({', '.join(IMAGE_SUFFIXES)})")

    def crops_for(size: int, views: tuple[str, ...]):
        if views != ("roi",):
            raise ValueError(f"a member uses the views {views}: a folder of ROI images gives only 'roi' "
                             "(pass the COCO file with the frames instead)")
        return np.array([p.name for p in paths], dtype=object), read_roi_files(paths, size, progress)

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
               "deepest_sure_rank/taxon: the deepest rank whose probability reaches --confidence.")
    parser.add_argument("model", help="run folder, pipeline round or run folder, or package folder")
    parser.add_argument("input", help="COCO JSON file or folder of ROI images")
    parser.add_argument("--out", required=True, help="CSV to write (atomically)")
    parser.add_argument("--images", default=None, help="folder of the COCO file's frames")
    parser.add_argument("--work", default="outputs/predict", help="crop cache and fetched frames (default %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.9, help="probability of a 'sure' rank (default 0.9)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each member's evaluation batch size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    try:
        if not 0.5 < args.confidence <= 1:
            raise ValueError(f"--confidence must be in (0.5, 1], got {args.confidence}")
        taxonomy = load_taxonomy()
        members = find_members(args.model)
        source = Path(args.input)
        if source.is_dir():
            crops_for, id_column = _folder_crops(source, progress), "file"
        elif source.is_file():
            images = Path(args.images) if args.images else None
            crops_for, id_column = _coco_crops(source, images, Path(args.work), taxonomy, progress), "annotation_id"
        else:
            raise FileNotFoundError(f"input {source}: no such file or folder")
        preds = predict_members(members, crops_for, args.device, args.batch_size, taxonomy, progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = prediction_table(preds.mean, taxonomy, distance_matrix(taxonomy), args.confidence)
    table.insert(0, id_column, preds.annotation_id)
    atomic_write_with(Path(args.out), lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    sure = table["deepest_sure_rank"].value_counts().reindex([*RANK_COLUMNS, ""], fill_value=0)
    counts = ", ".join(f"{rank or 'none'} {n}" for rank, n in sure.items())
    print(f"{len(table)} ROIs, {len(members)} member(s) -> {args.out}; deepest rank with p >= {args.confidence}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
