"""A run's checkpoint.pt: everything needed to continue training exactly (cf. timm's CheckpointSaver).

The file holds the model, optimiser, scheduler and grad-scaler states, the epoch count and metric
history, every random stream's state, the resolved config and the class order. It is rewritten
atomically after every epoch, so a kill leaves the last finished epoch; `resume` refuses a config
that differs from the saved one in anything but RESUMABLE_KEYS.
"""
from __future__ import annotations

from pathlib import Path

import torch

from src.artifacts import atomic_write_with
from src.runtime import rng_states, set_rng_states

CHECKPOINT_FILE = "checkpoint.pt"
# Keys used after the last epoch only: a resume may change them, but they change a finished run's predictions.
FINAL_PREDICTION_KEYS = ("train.tta_views",)
# Keys that may change between a run and its resumption without changing the result.
RESUMABLE_KEYS = ("train.resume", "train.max_epochs_this_run", "train.progress", "data.num_workers",
                  "output.wait_for_lock", "data.cache_dir", "data.max_missing_train_share", "data.allow_missing_test",
                  *FINAL_PREDICTION_KEYS)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict, current: dict, ignore: tuple[str, ...] = RESUMABLE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two config dicts (ignoring the keys in `ignore`)."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


class ConfigMismatchError(ValueError):
    """A run is resumed with a config that differs from its checkpoint's."""


class CheckpointSaver:
    """Saves and restores the training state of one run folder's checkpoint.pt."""

    def __init__(self, run_dir: str | Path, model, optimizer, scheduler, scaler, generator: torch.Generator,
                 config: dict, classes: tuple[str, ...]):
        self.path = Path(run_dir) / CHECKPOINT_FILE
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.generator, self.config, self.classes = generator, config, classes

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, epoch: int, history: list[dict]) -> None:
        """Write the state after `epoch` finished epochs (atomically: the old file stays until the new is whole)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                 "history": history, "rng": rng_states(self.generator), "config": self.config,
                 "classes": list(self.classes)}
        atomic_write_with(self.path, lambda tmp: torch.save(state, tmp))

    def resume(self) -> tuple[int, list[dict]]:
        """Load every state from the file; returns (finished epochs, history).

        ConfigMismatchError when the config differs from the saved one outside RESUMABLE_KEYS."""
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        changed = config_differences(state["config"], self.config)
        if changed:
            raise ConfigMismatchError(f"{self.path}: the config differs from the checkpoint's in {changed}; "
                                      "resume with the same config, or start a new run with another output.run_name")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"], self.generator)
        return state["epoch"], state["history"]
