"""Stage: train the initial ensemble (round 0): one member per seed, on the training annotations only.

    python -m src.stages.train_ensemble CONFIG.yaml [overrides] [--print-sbatch]

Members are trained one after another through src.train.train into
output_root/name/round_0/members/seed_<s>/; a member whose done.json exists is skipped, and an
interrupted one continues from its checkpoint (train.resume) when run again. On a SLURM cluster the
members can be trained in parallel instead: --print-sbatch prints the job-array command (one task
per seed: train_model.sh runs this stage with --member-index $SLURM_ARRAY_TASK_ID).
"""
from __future__ import annotations

from src.stages.common import open_run, run_cli, sbatch_hint, stage_parser, train_round
from src.stages.pipeline_config import PipelineConfig


def train_ensemble(cfg: PipelineConfig, trainer=None, member_index: int | None = None) -> list:
    """Train round 0's members (skipping finished ones); returns their run folders."""
    return train_round(cfg, 0, trainer=trainer, member_index=member_index)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("train_ensemble", __doc__)
    parser.add_argument("--print-sbatch", action="store_true", help="print the SLURM job-array command and exit")
    parser.add_argument("--member-index", type=int, default=None, help="train only seeds[i] (one SLURM array task)")

    def body(cfg, args):
        hint = sbatch_hint(args.config, args.overrides, 0, len(cfg.seeds))
        if args.print_sbatch:
            print(hint)
            return
        whole = args.member_index is None  # else one SLURM array task: it locks only its member's folder
        with open_run(cfg, "train_ensemble" if whole else None, args.wait, lock=whole):
            if whole:
                print(f"training {len(cfg.seeds)} members one after another; on SLURM, in parallel: {hint}")
            train_ensemble(cfg, member_index=args.member_index)

    return run_cli(parser, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
