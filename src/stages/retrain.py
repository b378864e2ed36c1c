"""Stage: train round R's ensemble on the training annotations plus round R's pseudo-labels.

    python -m src.stages.retrain CONFIG.yaml [overrides] --round R [--print-sbatch]

Each member reads round_R/pseudo_labels.csv through data.pseudo_labels (the training annotations are
never modified); with warm_start, member seed s starts from the weights of round R-1's member of seed s
(its model.pt) and trains with warm_start_overrides over train_overrides.
Finished members (done.json) are skipped. --print-sbatch prints the SLURM job-array command
(train_model.sh CONFIG --round R, one task per seed).
"""
from __future__ import annotations

from src.stages.cli import StageError, check_round, run_cli, stage_parser
from src.stages.members import train_round
from src.stages.pipeline_config import PipelineConfig
from src.stages.train_stage import add_member_arguments, run_member_training


def retrain(cfg: PipelineConfig, r: int, trainer=None, member_index: int | None = None) -> list:
    """Train round r (>= 1) on train + round r's pseudo-labels; returns the member run folders."""
    if r < 1:
        raise StageError("retrain is for rounds >= 1; round 0 is train_ensemble")
    check_round(cfg, r)
    pseudo = cfg.layout.pseudo_labels(r)
    if not pseudo.is_file():
        raise StageError(f"{pseudo} not found: run the pseudo_label stage for round {r} first")
    return train_round(cfg, r, pseudo_labels=pseudo.resolve(), warm_from=r - 1 if cfg.warm_start else None,
                       trainer=trainer, member_index=member_index)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("retrain", __doc__)
    parser.add_argument("--round", type=int, default=1, help="self-training round to train (>= 1)")
    add_member_arguments(parser)

    def body(cfg, args):
        run_member_training(cfg, args, args.round, f"retrain_{args.round}",
                            lambda cfg, member_index: retrain(cfg, args.round, member_index=member_index))

    return run_cli(parser, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
