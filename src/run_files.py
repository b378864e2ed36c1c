"""The files of a training run folder (a member) and how to find them: the one place their names are written.

Written by src.train (and a packaged member's copy by src.stages.package); read by the stages, src.predict,
the Kaggle notebook and the benchmarks. No torch and no numpy here, so the ensemble-only stages can use it.

    config.yaml           the run's resolved training config
    checkpoint.pt         full resumable state (model, optimizer, ...), the last epoch
    model.pt              weights only (written every epoch; what a package ships)
    metrics.csv           one row per epoch
    done.json             written last: the run is finished
    <split>_probs.npz     per-head softmax of the test / val ROIs (src.forward.write_predictions)
    predictions.csv, val_predictions.csv    the decoded labels of those ROIs
"""
from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"  # full resumable state
WEIGHTS_FILE = "model.pt"  # weights only
METRICS_FILE = "metrics.csv"
DONE_FILE = "done.json"
CURVES_FILE = "curves.png"
TRAIN_LOG_FILE = "train.log"  # a member's output when the pipeline trains several at once
# A member's weight files, preferred first (a run trained before model.pt existed has checkpoint.pt only).
WEIGHTS_FILES = (WEIGHTS_FILE, CHECKPOINT_FILE)


def probs_file(split: str) -> str:
    """<split>_probs.npz: the saved probabilities of split 'test' or 'val'."""
    return f"{split}_probs.npz"


def predictions_file(split: str) -> str:
    """The decoded labels of a split: predictions.csv for test, <split>_predictions.csv otherwise."""
    return "predictions.csv" if split == "test" else f"{split}_predictions.csv"


def is_done(run_dir: str | Path) -> bool:
    """Whether the run finished (its done.json exists)."""
    return (Path(run_dir) / DONE_FILE).is_file()


def has_weights(run_dir: str | Path) -> bool:
    """Whether a member's folder holds saved weights (model.pt or checkpoint.pt): its training has begun."""
    return any((Path(run_dir) / name).is_file() for name in WEIGHTS_FILES)


def weights_file(run_dir: str | Path) -> Path:
    """The member's weights: model.pt (weights only), else checkpoint.pt (runs from before model.pt)."""
    for name in WEIGHTS_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{run_dir}: neither {WEIGHTS_FILE} nor {CHECKPOINT_FILE} found (not a trained member)")


def warm_start_file(run_dir: str | Path) -> Path:
    """The weight file a warm start from `run_dir` uses: the first of WEIGHTS_FILES present, else model.pt."""
    try:
        return weights_file(run_dir)
    except FileNotFoundError:
        return Path(run_dir) / WEIGHTS_FILE


def drop_checkpoint(run_dir: str | Path, keep: bool = False) -> bool:
    """Remove a finished run's checkpoint.pt (only resuming reads it; with AdamW 3x the size of model.pt), unless
    `keep`, and only where done.json and model.pt exist. Returns whether it removed one."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if keep or not is_done(run_dir) or not (Path(run_dir) / WEIGHTS_FILE).is_file() or not path.is_file():
        return False
    path.unlink()
    return True
