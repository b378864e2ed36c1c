"""A run folder's state: its lock, the config fingerprint in state.json, the finished steps, temporary files."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from typing import Iterator

import yaml

from src.artifacts import atomic_write_json, create_json_if_absent, remove_stale_temps, run_lock
from src.config import config_sources
from src.stages.cli import StageError
from src.stages.members import validate_member_configs
from src.stages.pipeline_config import PipelineConfig, new_run_name

UNFINGERPRINTED = {"keep_checkpoints"}


def config_fingerprint(cfg: PipelineConfig) -> str:
    """Hash of the resolved pipeline config and the text of the training config file (and of its bases).
    keep_checkpoints is left out: it changes no result, and a run may be continued with the other value."""
    sources = config_sources(cfg.train_config) if cfg.train_config else []
    resolved = yaml.safe_dump(cfg.model_dump(mode="json", exclude=UNFINGERPRINTED), sort_keys=False)
    text = resolved + "".join(path.read_text() for path in sources)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_state(cfg: PipelineConfig) -> dict:
    """The run's state.json (config fingerprint, finished steps), created for this config when absent.

    StageError when the run was started with a different config: finished steps are never redone or
    rewritten under another config, the message names a new run name to use instead."""
    fingerprint = config_fingerprint(cfg)
    path = cfg.layout.state
    if not path.is_file():
        create_json_if_absent(path, {"config_fingerprint": fingerprint, "finished": {}})
    state = json.loads(path.read_text())
    if state.get("config_fingerprint") != fingerprint:
        raise StageError(f"{cfg.layout.root} was started with a different config (see its pipeline.yaml and "
                         f"state.json), and what it holds is not redone or rewritten with another one: start a new "
                         f"run with name={new_run_name(cfg)} (or remove {cfg.layout.root} to start over)")
    return state


def record_step(cfg: PipelineConfig, state: dict, step: str, seconds: float) -> None:
    """Mark `step` finished in state.json (the pipeline then skips it)."""
    state["finished"][step] = {"seconds": round(seconds, 2),
                               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(cfg.layout.state, state)


def remove_run_temps(cfg: PipelineConfig) -> int:
    """Remove the temporary files a killed stage left in the run folder, its rounds and its submissions
    (members' folders are cleaned by their training). Call it holding the run's lock."""
    layout = cfg.layout
    folders = [layout.root, layout.submit_dir, *layout.root.glob("round_*")]
    removed = sum(remove_stale_temps(folder) for folder in folders)
    for decoder in cfg.decoding.decoders:
        path = layout.submission(decoder)
        removed += remove_stale_temps(path.parent, f".{path.name}.*.tmp")
    return removed


def is_main_process() -> bool:
    """False in the other processes of a torchrun job (they train; rank 0 keeps the books)."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def open_run(cfg: PipelineConfig, step: str | None = None, wait: bool = False, lock: bool = True) -> Iterator[dict]:
    """Around every stage's work: check the member configs, hold the run folder's lock (unless `lock` is
    False: a SLURM array task training one member, which locks only its member's folder), check the
    config fingerprint (recording it in a new run), remove temporary files a killed run left; on success
    record `step` as finished. Yields the run's state."""
    validate_member_configs(cfg)
    lock = lock and is_main_process()
    advice = "wait for it to finish (--wait waits), or use another run name"
    with run_lock(cfg.layout.root, wait, advice) if lock else contextlib.nullcontext():
        state = load_state(cfg)
        if lock:
            remove_run_temps(cfg)
        start = time.time()
        yield state
        if step is not None and lock and step not in state["finished"]:
            record_step(cfg, state, step, time.time() - start)
