"""Stage: make the data of a pipeline run ready for training.

    python -m src.stages.prepare CONFIG.yaml [overrides]

When `prepare.synthetic_preset` is set and data_root holds no complete generated benchmark yet
(generator.json is written last), it is generated there (src.data.synthetic). Then, with `prepare.download`, the frames of the
train and test COCO files are fetched into data_root/{train,test}/images and their ROIs cut
(src.data.download); a split whose annotations.csv already exists is left alone. Inputs are never
overwritten.
"""
from __future__ import annotations

from pathlib import Path

from src.stages.common import StageError, run_cli, stage_parser
from src.stages.pipeline_config import PipelineConfig

SPLITS = ("train", "test")


def prepare(cfg: PipelineConfig) -> dict:
    """Generate (optionally) and download the data under cfg.data_root; returns what was done."""
    root = Path(cfg.data_root)
    done = {"data_root": str(root), "generated": False, "downloaded": []}
    preset = cfg.prepare.synthetic_preset
    if preset is None and not (root / "dataset_train.json").is_file():
        raise StageError(f"{root / 'dataset_train.json'} not found (set prepare.synthetic_preset to generate "
                         "a benchmark, or put the competition files there)")
    if preset is not None and not (root / "generator.json").is_file():  # written last by a complete generation
        from src.data.synthetic import generate_benchmark

        print(f"  generating the '{preset}' benchmark into {root}", flush=True)
        generate_benchmark(root, preset=preset, seed=cfg.prepare.synthetic_seed, progress=False)
        done["generated"] = True
    if cfg.prepare.download:
        from src.data.download import download_complete, download_split

        for split in SPLITS:
            if download_complete(root / split):  # an interrupted download left annotations.csv: resume it
                continue
            print(f"  fetching frames and cutting ROIs of {split} -> {root / split}", flush=True)
            status = download_split(root / f"dataset_{split}.json", root / split, progress=False)
            if status != 0:  # a few lost frames should not stop a run: say so and go on
                print(f"  warning: {split} download reported problems; see {root / split / 'failures.csv'}", flush=True)
            done["downloaded"].append(split)
    if cfg.solution and not Path(cfg.solution).is_file():
        raise StageError(f"solution file {cfg.solution} not found")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("prepare", __doc__)
    return run_cli(parser, lambda cfg, args: print(prepare(cfg)), argv)


if __name__ == "__main__":
    raise SystemExit(main())
