"""What the two member-training stages (train_ensemble: round 0, retrain: rounds >= 1) share: their options
and their body, printing the SLURM job-array command or training the round's members."""
from __future__ import annotations

from typing import Callable

from src.stages.members import sbatch_hint
from src.stages.pipeline_config import PipelineConfig
from src.stages.state import open_run


def add_member_arguments(parser) -> None:
    """The options of the two member-training stages (train_ensemble, retrain)."""
    parser.add_argument("--print-sbatch", action="store_true", help="print the SLURM job-array command and exit")
    parser.add_argument("--member-index", type=int, default=None, help="train only seeds[i] (one SLURM array task)")


def run_member_training(cfg: PipelineConfig, args, r: int, step: str, train: Callable) -> None:
    """The body of train_ensemble and retrain: print the sbatch command (--print-sbatch), or train round r's
    members with `train(cfg, member_index=...)`: all of them one after another under the run's lock, recording
    `step`, or one SLURM array task (--member-index), which locks only its member's folder."""
    hint = sbatch_hint(args.config, args.overrides, r, len(cfg.seeds))
    if args.print_sbatch:
        print(hint)
        return
    whole = args.member_index is None  # else one SLURM array task: it locks only its member's folder
    with open_run(cfg, step if whole else None, args.wait, lock=whole):
        if whole:
            at_once = f"{min(cfg.parallel_members, len(cfg.seeds))} at a time" if cfg.parallel_members > 1 \
                else "one after another"
            print(f"training {len(cfg.seeds)} members {at_once}; on SLURM, in parallel: {hint}")
        train(cfg, member_index=args.member_index)
