"""Loading the project's .pt files without running code from them.

Unpickling without restriction (torch.load with weights_only off) builds arbitrary objects: a crafted
model.pt, checkpoint.pt, package member or model.pretrained_path could run any command while being loaded. Every .pt file the project reads
goes through `load_state_file`, which unpickles only tensors, python primitives (dict, list, tuple, str,
int, float, bool, None) and, for checkpoints written before the numpy random state was saved as a list,
plain numpy arrays. Anything else is an UnsafeFileError naming the file (a one-line error, exit code 2, in
the command-line tools).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class UnsafeFileError(ValueError):
    """A .pt file holds objects other than tensors and plain data (or is not a torch file at all)."""


def _numpy_array_globals() -> list:
    """What unpickling a plain numpy array needs (older checkpoints saved numpy's RNG state as one)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_state_file(path: str | Path, map_location="cpu", mmap: bool = False):
    """torch.load(path, weights_only=True): tensors and plain data only; UnsafeFileError otherwise."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as err:  # pickle.UnpicklingError from the restricted unpickler, or a file that is no .pt
        reason = str(err).splitlines()
        detail = next((line.strip() for line in reason if "GLOBAL" in line or "global" in line), None)
        detail = detail or f"{type(err).__name__}: {reason[0].strip() if reason else ''}"
        raise UnsafeFileError(f"{path}: refusing to load: the file holds more than tensors and plain data, "
                              f"or is no torch file ({detail[:200]}); only load weights written by this "
                              "project") from None
