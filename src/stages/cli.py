"""The stages' command line: the error they report, the argument parser, running a stage's body, tables."""
from __future__ import annotations

import argparse
from typing import Callable

import numpy as np

from src.artifacts import RunLockedError, exit_code
from src.config import ConfigError, describe_config
from src.decoding import DecoderError, PredictionFileError
from src.stages.pipeline_config import PipelineConfig, load_pipeline_config
from src.submission import LabelFileError


class StageError(RuntimeError):
    """A stage cannot run (missing inputs, inconsistent artefacts); the message says why."""


def stage_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The stage's argument parser: CONFIG, overrides, and every pipeline config key in --help."""
    parser = argparse.ArgumentParser(prog=f"python -m src.stages.{prog}", description=doc,
                                     epilog="pipeline config keys (key = default  # meaning):\n"
                                            + describe_config(PipelineConfig),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="pipeline config YAML (e.g. cfg/pipeline_demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the pipeline config")
    parser.add_argument("--wait", action="store_true",
                        help="when another process works in the run folder: wait for it (default: stop, naming it)")
    return parser


def check_round(cfg: PipelineConfig, r: int) -> int:
    """StageError for a round outside 0..cfg.rounds (a --round beyond the configured rounds); returns r."""
    if not 0 <= r <= cfg.rounds:
        raise StageError(f"round {r} is not a round of this run: the configured rounds are 0..{cfg.rounds}")
    return r


def run_cli(parser: argparse.ArgumentParser, body: Callable[[PipelineConfig, argparse.Namespace], object],
            argv: list[str] | None = None) -> int:
    """Parse, load the pipeline config, run `body`; one-line errors and exit code 2 on known failures
    (bad config, missing or inconsistent inputs, a run folder in use or made with another config), 1 when
    a write fails (read-only folder, full disk)."""
    args = parser.parse_intermixed_args(argv)  # overrides may come after options
    return exit_code(lambda: body(load_pipeline_config(args.config, args.overrides), args),
                     (ConfigError, StageError, LabelFileError, FileNotFoundError, RunLockedError,
                      PredictionFileError, DecoderError))



def format_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of `rows` (floats to 3 decimals, missing cells blank)."""
    def cell(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
