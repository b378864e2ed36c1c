"""The inference command line: predict every ROI of a COCO file or a folder of ROI images with a run, a
pipeline round or a package (the library is src.inference), and write per ROI the concept, the Bayes concept
and per rank the most probable taxon with its probability (see --help):

    python -m src.predict outputs/pipeline/demo/round_2 inputs/synthetic/demo/dataset_test.json --out preds.csv
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.artifacts import atomic_write_with
from src.data.coco import annotation_table, frame_ids_of
from src.decoding import DECODERS, FRAME_DECODERS
from src.ensemble import DIFFUSION_ALPHA, SIGMA_CONVENTIONS, expected_distance, taxon_probabilities
from src.inference import (
    decode_predictions,
    find_members,
    load_crops,
    predict_members,
    read_roi_files,
    resolve_device,
    save_ensemble_probs,
)
from src.run_files import CONFIG_FILE
from src.taxonomy import RANKS, Taxonomy, load_taxonomy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RANK_COLUMNS = RANKS[1:]  # phylum .. species (every concept is an animal)


def _cli_decoding(model: Path, decoder: str | None) -> dict:
    """The decoding parameters for --decoder: a package's (fitted when packaging), else the defaults of the
    decoders that need no fitting."""
    from src.manifest import MANIFEST, package_decoding, read_package

    if decoder is None:
        return {}
    trained_here = (model / CONFIG_FILE).is_file() or (model / "members").is_dir() or any(model.glob("round_*"))
    if (model / MANIFEST).is_file() or not trained_here:  # a package, as find_members reads it
        return package_decoding(*read_package(model))
    if decoder == "bayes_cal" or decoder in FRAME_DECODERS:
        raise ValueError(f"--decoder {decoder} needs parameters fitted on validation: package the ensemble "
                         "(python -m src.stages.package) and predict with the package")
    return {"sigma": SIGMA_CONVENTIONS[0], "diffusion_alpha": DIFFUSION_ALPHA}


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
