"""A run's checkpoints (cf. timm's CheckpointSaver): model.pt every epoch, checkpoint.pt every N epochs.

    model.pt        weights only: the model's state dict, the epoch count, the resolved config and the class
                    order (the format of a packaged member's model.pt; src.inference and warm starts load it)
    checkpoint.pt   everything needed to continue training exactly: the model, optimiser, scheduler and
                    grad-scaler states, the epoch count and metric history, every random stream's state,
                    the config and the class order; written every train.full_checkpoint_every epochs, at
                    the last epoch and when train.max_epochs_this_run stops the process

Both are rewritten atomically, so a kill leaves the last finished epoch's model.pt and the last full
checkpoint. `resume` continues from checkpoint.pt (a newer model.pt cannot be continued from: it lacks the
optimiser state) and refuses a config that differs from the saved one in anything but RESUMABLE_KEYS.
"""
from __future__ import annotations

from pathlib import Path

import torch

from src.artifacts import atomic_write_with
from src.run_files import CHECKPOINT_FILE, WEIGHTS_FILE
from src.runtime import rng_states, set_rng_states
from src.serialization import load_state_file

# Keys used after the last epoch only: a resume may change them, but they change a finished run's predictions.
FINAL_PREDICTION_KEYS = ("train.tta_views",)
# Keys that may change between a run and its resumption without changing the result (train.threads: the order
# of float sums only).
RESUMABLE_KEYS = ("train.resume", "train.threads", "train.max_epochs_this_run", "train.max_steps", "train.progress",
                  "data.num_workers", "train.full_checkpoint_every", "output.wait_for_lock", "data.cache_dir",
                  "data.max_missing_train_share", "data.allow_missing_test", *FINAL_PREDICTION_KEYS)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict, current: dict, ignore: tuple[str, ...] = RESUMABLE_KEYS,
                       defaults: dict | None = None) -> list[str]:
    """Dotted keys whose values differ between two config dicts (ignoring the keys in `ignore`).

    A key missing on one side (a config saved before the key existed) takes its value from `defaults`."""
    a, b, d = _flatten(saved), _flatten(current), _flatten(defaults or {})
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k, d.get(k)) != b.get(k, d.get(k)))


def saved_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint files (full and weights-only) present in a run folder."""
    return [p for p in (Path(run_dir) / CHECKPOINT_FILE, Path(run_dir) / WEIGHTS_FILE) if p.is_file()]


class ConfigMismatchError(ValueError):
    """A run is resumed with a config that differs from its checkpoint's."""


class CheckpointSaver:
    """Saves and restores the training state of one run folder (model.pt and checkpoint.pt)."""

    def __init__(self, run_dir: str | Path, model, optimizer, scheduler, scaler, generator: torch.Generator,
                 config: dict, classes: tuple[str, ...], full_every: int = 1, defaults: dict | None = None):
        self.path = Path(run_dir) / CHECKPOINT_FILE
        self.weights_path = Path(run_dir) / WEIGHTS_FILE
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.generator, self.config, self.classes = generator, config, classes
        self.full_every, self.defaults = full_every, defaults

    def exists(self) -> bool:
        """Whether a full (resumable) checkpoint exists."""
        return self.path.exists()

    def save(self, epoch: int, history: list[dict], last: bool = False) -> bool:
        """After `epoch` finished epochs: model.pt, and checkpoint.pt when epoch is a multiple of full_every or
        `last` (the end of the run or of this process). Returns whether checkpoint.pt was written."""
        self.save_weights(epoch)
        full = last or epoch % self.full_every == 0
        if full:
            self.save_full(epoch, history)
        return full

    def save_weights(self, epoch: int) -> None:
        """model.pt: weights, epoch, config and class order (atomically)."""
        state = {"model": self.model.state_dict(), "epoch": epoch, "config": self.config,
                 "classes": list(self.classes)}
        atomic_write_with(self.weights_path, lambda tmp: torch.save(state, tmp))

    def save_full(self, epoch: int, history: list[dict]) -> None:
        """checkpoint.pt: the whole training state (atomically: the old file stays until the new is whole)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                 "history": history, "rng": rng_states(self.generator), "config": self.config,
                 "classes": list(self.classes)}
        atomic_write_with(self.path, lambda tmp: torch.save(state, tmp))

    def weights_epoch(self) -> int | None:
        """The epoch count of model.pt (None when absent); memory-mapped, so the weights are not read."""
        if not self.weights_path.is_file():
            return None
        return load_state_file(self.weights_path, mmap=True)["epoch"]

    def resume(self) -> tuple[int, list[dict]]:
        """Load every state from checkpoint.pt; returns (finished epochs, history).

        ConfigMismatchError when the config differs from the saved one outside RESUMABLE_KEYS."""
        state = load_state_file(self.path)
        changed = config_differences(state["config"], self.config, defaults=self.defaults)
        if changed:
            raise ConfigMismatchError(f"{self.path}: the config differs from the checkpoint's in {changed}; "
                                      "resume with the same config, or start a new run with another output.run_name")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"], self.generator)
        return state["epoch"], state["history"]
