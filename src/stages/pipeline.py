"""The whole method from one config: prepare -> train_ensemble -> (pseudo_label -> retrain) x R -> submit.

    python -m src.stages.pipeline CONFIG.yaml [overrides]

Resumable: every finished step is recorded in output_root/name/state.json (written atomically), and
a re-run after a kill skips those steps; inside a training step, finished members are skipped and an
interrupted one resumes from its checkpoint. The state also records a fingerprint of the pipeline
config and the training config file: a run cannot be continued with a different config (the message
names a new `name` to use), by this command or by any stage run alone. The run folder is locked while
a pipeline or stage works in it: a second one stops naming the first's pid and host (`--wait` waits).
The members' configs are validated before any step runs. At the end a summary table (per round:
pseudo-label count and accuracy when the solution is known; per decoder: validation/test mean distance,
test accuracy and distinct test labels;
plus the time of each step) is printed and saved as summary.md and summary.json in the run folder.
"""
from __future__ import annotations

import json
import time
from typing import Callable

from src.artifacts import atomic_write_json, atomic_write_text
from src.config import config_to_yaml
from src.stages.cli import format_table, run_cli, stage_parser
from src.stages.pipeline_config import PipelineConfig
from src.stages.plan import show_plan
from src.stages.prepare import prepare
from src.stages.pseudo_label import make_pseudo_labels
from src.stages.retrain import retrain
from src.stages.state import open_run, record_step
from src.stages.submit import evaluate_round, submit
from src.stages.train_ensemble import train_ensemble


def pipeline_steps(cfg: PipelineConfig, trainer: Callable | None = None) -> list[tuple[str, Callable[[], object]]]:
    """The ordered (step name, action) list of a run."""
    steps = [("prepare", lambda: prepare(cfg)), ("train_ensemble", lambda: train_ensemble(cfg, trainer))]
    for r in range(1, cfg.rounds + 1):
        steps.append((f"pseudo_label_{r}", lambda r=r: make_pseudo_labels(cfg, r)))
        steps.append((f"retrain_{r}", lambda r=r: retrain(cfg, r, trainer)))
    steps.append(("submit", lambda: submit(cfg)))
    return steps


def run_pipeline(cfg: PipelineConfig, trainer: Callable | None = None, wait: bool = False) -> dict:
    """Run (or continue) every step, then write and print the summary; returns the summary.

    Holds the run folder's lock throughout (`wait`: wait for another holder instead of stopping). Prints the
    plan (src.stages.plan) first, or after the prepare step when that makes dataset_train.json."""
    with open_run(cfg, wait=wait) as state:
        atomic_write_text(cfg.layout.root / "pipeline.yaml", config_to_yaml(cfg))
        steps = pipeline_steps(cfg, trainer)
        planned = show_plan(cfg)
        for i, (name, action) in enumerate(steps, 1):
            prefix = f"[pipeline {cfg.name}] step {i}/{len(steps)} {name}"
            if i > 1 and not planned:
                planned = show_plan(cfg)
            if name in state["finished"]:
                print(f"{prefix}: already done ({state['finished'][name]['seconds']:.0f} s), skipped", flush=True)
                continue
            print(f"{prefix}: running", flush=True)
            start = time.time()
            action()
            seconds = time.time() - start
            record_step(cfg, state, name, seconds)
            print(f"{prefix}: done in {seconds:.1f} s", flush=True)
        summary = summarise(cfg, state)
    print(summary["markdown"])
    return summary


def summarise(cfg: PipelineConfig, state: dict) -> dict:
    """Per-round table (pseudo-labels; per decoder: val/test mean distance, test accuracy, distinct test labels)
    and step times, saved as md + json."""
    rounds = []
    for r in range(cfg.rounds + 1):
        row: dict = {"round": r}
        stats_path = cfg.layout.round_dir(r) / "stats.json"
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
            row.update(pseudo_labels=stats["count"], pseudo_accuracy=stats.get("accuracy"),
                       pseudo_distance=stats.get("mean_distance"), added=stats["added"], dropped=stats["dropped"],
                       changed=stats["changed"])
        evaluation = evaluate_round(cfg, r)
        row["temperature"] = evaluation.temperature
        row.update({f"val_{k}": v for k, v in evaluation.val.items()})
        row.update({f"test_{k}": v for k, v in evaluation.test.items()})
        row.update({f"test_acc_{k}": v for k, v in evaluation.test_accuracy.items()})
        row.update({f"distinct_{k}": v for k, v in evaluation.distinct.items()})
        rounds.append(row)
    first = ["round", "pseudo_labels", "pseudo_accuracy", "pseudo_distance", "added", "dropped", "changed", "temperature"]
    present = [key for row in rounds for key in row]
    columns = [c for c in first if c in present] + [c for c in dict.fromkeys(present) if c not in first]
    times = [{"step": name, "seconds": info["seconds"]} for name, info in state["finished"].items()]
    total = sum(t["seconds"] for t in times)
    time_rows = [{"step": t["step"], "seconds": f"{t['seconds']:.1f}"} for t in times + [{"step": "total", "seconds": total}]]
    markdown = (f"# Pipeline {cfg.name}: {len(cfg.seeds)} members, {cfg.rounds} self-training rounds, "
                f"min_votes {cfg.pseudo.min_votes}, U >= {cfg.pseudo.u_threshold}\n\n"
                "Mean hierarchical distance (0 best, 12 worst) per decoder; val = frame-grouped validation split, "
                "test = generated/known test solution; test_acc = exact test accuracy; distinct = labels predicted "
                "on the test (of 79).\n\n"
                + format_table(rounds, columns) + "\n\n## Time per step\n\n"
                + format_table(time_rows, ["step", "seconds"]) + "\n")
    summary = {"rounds": rounds, "times": times, "total_seconds": total, "markdown": markdown}
    atomic_write_text(cfg.layout.root / "summary.md", markdown)
    atomic_write_json(cfg.layout.root / "summary.json", {k: v for k, v in summary.items() if k != "markdown"})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("pipeline", __doc__)
    return run_cli(parser, lambda cfg, args: run_pipeline(cfg, wait=args.wait), argv)


if __name__ == "__main__":
    raise SystemExit(main())
