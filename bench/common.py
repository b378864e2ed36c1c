"""What the benchmark scripts share: one timing helper, the speed-line format, and the machine description."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from src.runtime import cpu_model, package_versions

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], Any], repeats: int = 1, warmup: int = 0, sync: Callable[[], None] | None = None,
          stat: str = "min") -> tuple[Any, float]:
    """(last result, seconds) of fn() over `repeats` timed calls after `warmup` untimed ones.

    stat 'min' (best time: the least disturbed run on a noisy machine) or 'median'; `sync` runs after
    every call inside the timing (torch.cuda.synchronize for GPU work)."""
    if stat not in ("min", "median"):
        raise ValueError(f"stat must be 'min' or 'median', got {stat!r}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return result, (min(times) if stat == "min" else statistics.median(times))


def target_check(ratio: float, target: float | None, higher_is_better: bool = True) -> str:
    """'met' / 'not met' for a ratio against a target, or 'no target'."""
    if target is None:
        return "no target"
    ok = ratio >= target if higher_is_better else ratio <= target
    return "met" if ok else "not met"


def speed_row(name: str, figure: float, reference: float, unit: str, ratio: float, target: str,
              verdict: str) -> dict:
    """One speed line: the figure, the reference measured in the same run, their ratio, the target, verdict."""
    return {"measurement": name, "figure": figure, "reference": reference, "unit": unit, "ratio": ratio,
            "target": target, "verdict": verdict}


def format_speed_row(row: dict) -> str:
    return (f"{row['measurement']}: {row['figure']:.4g} vs reference {row['reference']:.4g} {row['unit']}, "
            f"ratio {row['ratio']:.2f}x, target {row['target']}: {row['verdict']}")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def git_commit(repo: Path = REPO) -> str:
    """HEAD commit of the repository, with '+dirty' when tracked files have local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict:
    """Date, CPU model, core count, load average, Python/torch versions, the numeric packages' versions
    (src.runtime.package_versions), git commit."""
    info = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "load_average": [round(x, 2) for x in load_average()],
            "python": platform.python_version(), "git_commit": git_commit(), "packages": package_versions()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info
