"""Atomic artefact writing: write to a temporary file in the same folder, then rename.

A crash or Ctrl-C therefore never leaves a half-written file under the final name; what a killed run
leaves is a `.<name>.<random>.tmp` file, which `remove_stale_temps` clears when the run is resumed.
`run_lock` keeps two processes from writing one run folder at once.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from src.run_files import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    predictions_file,
)

_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_PATTERN = ".*.tmp"  # the names atomic_path gives its temporary files: .<name>.<random>.tmp
LOCK_FILE = ".lock"  # run_lock's file in the locked folder
# errno values of file operations that fail for a reason the user must fix (no access, read-only, full disk, quota)
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})
FULL_DISK_BYTES = 1 << 20  # a file system with less free space than this is full


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
    except OSError as err:
        if err.filename is None and err.errno in WRITE_ERRNOS:  # name the artefact in the message
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
    except RuntimeError as err:
        # torch.save reports a full disk as "file write failed", without errno: ask the file system
        # while the partial file still takes the space.
        if shutil.disk_usage(tmp_path.parent).free < FULL_DISK_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise
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


def create_json_if_absent(path: str | Path, obj: Any) -> bool:
    """Write `obj` as JSON to `path` only if no file is there, atomically even against other processes
    (a hard link never replaces a file); returns whether this call created it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # TEMP_PATTERN
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2, default=str) + "\n")
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


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


def os_error_line(err: BaseException) -> str | None:
    """'PATH: No space left on device' for an OSError the user must fix (no access, a read-only file
    system, a full disk or quota); None for any other error (a bug: let its traceback show)."""
    if not isinstance(err, OSError) or err.errno not in WRITE_ERRNOS:
        return None
    return f"{err.filename}: {err.strerror}" if err.filename else f"{err.strerror or err}"


def exit_code(action: Callable[[], object], known: tuple[type[BaseException], ...]) -> int:
    """Run `action` for a command line: 0 when it returns; for a `known` error (a problem with the inputs)
    one line on stderr and 2; for a failed write (`os_error_line`) one line and 1; anything else raises."""
    try:
        action()
    except known as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if (line := os_error_line(err)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    return 0


class RunLockedError(RuntimeError):
    """Another live process holds the lock of a run folder; the message names it (pid, host)."""


@contextlib.contextmanager
def run_lock(folder: str | Path, wait: bool = False, advice: str = "") -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if needed) while the block runs.

    The lock is an flock on folder/.lock, which records the holder's pid and host. A second process gets
    RunLockedError naming the holder (and `advice`), or with `wait` blocks until the holder is done. The
    kernel releases the lock when its process dies, so a killed run never leaves a stale lock behind.
    (On NFS, Linux emulates flock with byte-range locks, which hold across hosts; Lustre needs its
    `flock` mount option.)"""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise RunLockedError(f"{folder} is in use by {holder}" + (f"; {advice}" if advice else "")) from None
            print(f"waiting for {folder}, in use by {holder}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------ output paths a user gives
# What the project writes into run folders, pipeline folders, packages and data folders: a command's output
# file (--out) is never one of them.
ARTEFACT_NAMES = frozenset({WEIGHTS_FILE, CHECKPOINT_FILE, CONFIG_FILE, "manifest.json", DONE_FILE, "state.json",
                            "classes.json", "pipeline.yaml", "dataset-metadata.json", LOCK_FILE, METRICS_FILE,
                            predictions_file("test"), predictions_file("val"), "annotations.csv", "solution.csv"})
ARTEFACT_SUFFIXES = frozenset({".pt", ".pth", ".safetensors", ".npz", ".npy", ".yaml", ".yml", ".json", ".py",
                               ".ipynb", ".png", ".jpg", ".jpeg"})
# A folder holding one of these is a project folder (run, pipeline round, package, data split): an existing
# file in it is never replaced by a command's output.
PROJECT_MARKERS = (CONFIG_FILE, "manifest.json", DONE_FILE, "state.json", "pipeline.yaml", LOCK_FILE,
                   CHECKPOINT_FILE, WEIGHTS_FILE)


class OutputPathError(ValueError):
    """An output path would overwrite an input, a project artefact, a folder or a device file."""


def check_output_path(out: str | Path, inputs=(), option: str = "--out", allow_suffixes=()) -> Path:
    """Refuse (OutputPathError, one line) an output file path that would replace something it must not:
    a folder, an existing non-regular file (a device such as /dev/full, a pipe, a socket), one of the
    command's `inputs` (a file, or an existing file inside an input folder), a project artefact (ARTEFACT_NAMES,
    or a suffix in ARTEFACT_SUFFIXES other than `allow_suffixes`), or an existing file inside a run folder,
    pipeline folder or package (a folder holding one of PROJECT_MARKERS). Returns the path. Call it before the
    work that produces the output."""
    out = Path(out)
    where = f"{option} {out}"
    if out.is_dir():
        raise OutputPathError(f"{where} is a folder: give a file path")
    if out.exists() and not out.is_file():
        raise OutputPathError(f"{where} exists and is not a regular file (a device, pipe or socket): give a file path")
    resolved = out.resolve()
    for source in (Path(s) for s in inputs if s):
        if not source.exists():
            continue
        if source.resolve() == resolved or (out.exists() and os.path.samefile(out, source)):
            raise OutputPathError(f"{where} is one of the command's inputs: write the output elsewhere")
        if source.is_dir() and out.exists() and source.resolve() in resolved.parents:
            raise OutputPathError(f"{where} would replace a file inside the input {source}: write the output elsewhere")
    if out.name in ARTEFACT_NAMES or (out.suffix.lower() in ARTEFACT_SUFFIXES
                                      and out.suffix.lower() not in {s.lower() for s in allow_suffixes}):
        raise OutputPathError(f"{where}: {out.name!r} is the name of a project artefact (weights, configs, manifests, "
                              "probabilities): write the output under another name")
    if out.exists() and any((resolved.parent / marker).exists() for marker in PROJECT_MARKERS):
        raise OutputPathError(f"{where} would replace a file of the run, pipeline or package folder {out.parent}: "
                              "write the output elsewhere")
    return out
