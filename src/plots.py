"""Figures written next to the artefacts they describe (PNG, written atomically, no display needed)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.artifacts import atomic_write_with


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> None:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    _pyplot().close(fig)


def plot_training_curves(history: list[dict], path: Path) -> None:
    """curves.png of a training run: loss, accuracy and mean distance per epoch."""
    plt = _pyplot()
    frame = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("loss", ["train_loss", "val_loss", "shifted_loss"]),
              ("accuracy", ["val_accuracy", "shifted_accuracy"]),
              ("mean distance", ["val_distance", "val_distance_bayes", "shifted_distance"])]
    for ax, (title, columns) in zip(axes, panels):
        for column in columns:
            if column in frame:
                points = frame[["epoch", column]].dropna()  # epochs without validation (train.validate_every)
                ax.plot(points["epoch"], points[column], marker="o", ms=3, label=column)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=90)


def plot_threshold_curves(curves: list[dict], path: Path, title: str) -> None:
    """Pseudo-label coverage vs U threshold per min_votes, plus accuracy and mean distance when known."""
    plt = _pyplot()
    frame = pd.DataFrame(curves)
    metrics = [m for m in ("coverage", "accuracy", "mean_distance") if m in frame and frame[m].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for k, part in frame.groupby("min_votes"):
            ax.plot(part["u_threshold"], part[metric].astype(float), marker=".", label=f">= {k} votes")
        ax.set_xlabel("ensemble U threshold")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path, dpi=110)
