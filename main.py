"""Train one model from a YAML config: `python main.py CONFIG.yaml [dotted.key=value ...]`.

Exit codes: 0 done; 1 a write failed (read-only folder, full disk, quota); 2 a bad config or override, a
config file that is not YAML text, missing data (also test ROIs without pixels), a bad data.pseudo_labels
file, a run folder that already holds a run or is in use by another process, or a resume with a changed
config (the same code as the stages and the scorer use for problems with their inputs). Each is one line
on stderr."""
from __future__ import annotations

import argparse
import os
import sys

from src.config import Config, ConfigError, describe_config, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a classifier (Wide ResNet + distance-weighted CE by default) on the crops of a "
                    "COCO dataset folder. The run folder is output.dir/output.run_name.",
        epilog="examples:\n"
               "  python main.py cfg/demo_wrn_dwce.yaml\n"
               "  python main.py cfg/wrn_dwce.yaml seed=3 output.run_name=wrn_s3\n"
               "  python main.py cfg/demo_ce.yaml train.epochs=2 train.resume=true\n"
               "  torchrun --nproc_per_node=4 main.py cfg/wrn_dwce.yaml\n\n"
               "A config file may extend another: `base: demo_wrn_dwce.yaml` (relative to its folder) plus the "
               "keys that differ.\nExit codes: 0 done; 1 a write failed (read-only folder, full disk, quota); 2 bad "
               "config, missing data (test\nROIs without pixels: see data.allow_missing_test), bad data.pseudo_labels, "
               "a run folder that holds a run or is in\nuse (see output.wait_for_lock), or a resume with a changed "
               "config.\n\n"
               "config keys (section.key = default  # meaning):\n" + describe_config(Config),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file (see cfg/)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=3e-4")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(Config, args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from src.artifacts import RunLockedError, exit_code
    from src.checkpoint import ConfigMismatchError
    from src.data.training import DataMissingError, PseudoLabelError  # torch import after argument checks
    from src.runtime import DeviceError
    from src.serialization import UnsafeFileError
    from src.train import train

    def train_and_name_the_run() -> None:
        run_dir = train(cfg)
        if os.environ.get("RANK", "0") == "0":  # torchrun: one line, from rank 0
            print(run_dir)
    return exit_code(train_and_name_the_run,
                     (DataMissingError, FileExistsError, PseudoLabelError, RunLockedError, ConfigMismatchError,
                      UnsafeFileError, DeviceError))


if __name__ == "__main__":
    sys.exit(main())
