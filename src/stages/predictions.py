"""A round's saved predictions for the stages: loaded, with frame ids attached and the decoders' parameters
fitted on validation (one code path for submit, package and pseudo_label)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data.coco import annotation_table, frame_ids_of
from src.decoding import (
    FRAME_DECODERS,
    PredictionFileError,
    RoundPredictions,
    fit_frame_prior,
    fit_validation_temperature,
    load_predictions,
)
from src.stages.cli import StageError
from src.stages.pipeline_config import PipelineConfig
from src.taxonomy import Taxonomy, distance_matrix, load_taxonomy


def load_round(cfg: PipelineConfig, members: list[Path], taxonomy: Taxonomy,
               frame_decoders: list[str] | None = None) -> RoundPredictions:
    """The members' val/test predictions (None where absent) and the decoders' parameters fitted on validation,
    one code path for submit, package and the pseudo-label stage: bayes_cal's temperature and, for
    `frame_decoders` (default: the frame decoders in decoding.decoders), a frame prior whose K is counted on
    the training frames of data_root/dataset_train.json outside the validation frames. With frame decoders the
    ROIs' frame ids are attached: test from dataset_test.json, validation from the val files (files written
    before training saved image_id: from dataset_train.json)."""
    try:
        val, test = load_predictions(members, "val", taxonomy), load_predictions(members, "test", taxonomy)
    except PredictionFileError as err:
        raise StageError(str(err)) from None
    if frame_decoders is None:
        frame_decoders = [d for d in cfg.decoding.decoders if d in FRAME_DECODERS]
    frame_prior = None
    if frame_decoders:
        train_json, test_json = Path(cfg.data_root) / "dataset_train.json", Path(cfg.data_root) / "dataset_test.json"
        train = _coco_table(train_json)
        if test is not None:
            test.frame_ids = _coco_frame_ids(test_json, _coco_table(test_json), test.annotation_id)
        if val is not None and val.frame_ids is None:
            val.frame_ids = _coco_frame_ids(train_json, train, val.annotation_id)
        frame_prior = fit_frame_prior(val, train["image_id"].to_numpy(), taxonomy.indices(train["concept_name"]),
                                      distance_matrix(taxonomy), frame_decoders, cfg.decoding.frame_iterations,
                                      cfg.decoding.frame_smoothing)
    return RoundPredictions(val, test, fit_validation_temperature(val), frame_prior)


def _coco_table(path: Path):
    """`annotation_table` of a COCO file; StageError when it cannot be read."""
    try:
        return annotation_table(path)
    except ValueError as err:
        raise StageError(str(err)) from None


def _coco_frame_ids(path: Path, table, annotation_ids) -> np.ndarray:
    try:
        return frame_ids_of(table, annotation_ids)
    except ValueError as err:
        raise StageError(f"{path}: {err}") from None


def load_taxonomy_and_distance() -> tuple[Taxonomy, np.ndarray]:
    taxonomy = load_taxonomy()
    return taxonomy, distance_matrix(taxonomy)
