"""Stage: train the initial ensemble (round 0): one member per seed, on the training annotations only.

    python -m src.stages.train_ensemble CONFIG.yaml [overrides] [--print-sbatch]

Members are trained one after another through src.train.train into
output_root/name/round_0/members/seed_<s>/; a member whose done.json exists is skipped, and an
interrupted one continues from its checkpoint (train.resume) when run again. On a SLURM cluster the
members can be trained in parallel instead: --print-sbatch prints the job-array command (one task
per seed: train_model.sh runs this stage with --member-index $SLURM_ARRAY_TASK_ID).
"""
from __future__ import annotations

from src.stages.cli import run_cli, stage_parser
from src.stages.members import train_round
from src.stages.pipeline_config import PipelineConfig
from src.stages.train_stage import add_member_arguments, run_member_training


def train_ensemble(cfg: PipelineConfig, trainer=None, member_index: int | None = None) -> list:
    """Train round 0's members (skipping finished ones); returns their run folders."""
    return train_round(cfg, 0, trainer=trainer, member_index=member_index)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("train_ensemble", __doc__)
    add_member_arguments(parser)

    def body(cfg, args):
        run_member_training(cfg, args, 0, "train_ensemble", train_ensemble)

    return run_cli(parser, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
