"""Atomic artefact writing: write to a temporary file in the same folder, then rename.

A crash or Ctrl-C therefore never leaves a half-written file under the final name; what a killed run
leaves is a `.<name>.<random>.tmp` file, which `remove_stale_temps` clears when the run is resumed.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_PATTERN = ".*.tmp"  # the names atomic_path gives its temporary files: .<name>.<random>.tmp


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # TEMP_PATTERN
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp_path)` and rename the result onto `path` (for pandas, torch, matplotlib)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """np.savez_compressed, atomically (np.savez would append .npz to a temp name: use a buffer)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temps(folder: str | Path, pattern: str = TEMP_PATTERN, min_age_s: float = 0.0) -> int:
    """Delete the temporary files a killed run left in `folder` (not in sub-folders); returns how many.

    Only files matching the glob `pattern` and last modified at least `min_age_s` seconds ago are removed.
    Call it when resuming, while no other process writes to `folder` (a live writer's temp file would go)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    for path in folder.glob(pattern):
        try:
            if path.is_file() and now - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass  # gone meanwhile
    return removed
