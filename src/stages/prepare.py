"""Stage: make the data of a pipeline run ready for training.

    python -m src.stages.prepare CONFIG.yaml [overrides]

When `prepare.synthetic_preset` is set and data_root holds no complete generated benchmark yet
(generator.json is written last), it is generated there (src.synthetic.generator). Then, with `prepare.download`, the frames of the
train and test COCO files are fetched into data_root/{train,test}/images and their ROIs cut
(src.data.download); a split whose annotations.csv already exists is left alone. Inputs are never
overwritten. Lost training frames give a warning (training drops their ROIs, up to
data.max_missing_train_share); test ROIs without a frame stop the stage, naming the download command,
unless `allow_missing_test` (their predictions would come from black crops).
"""
from __future__ import annotations

from pathlib import Path

from src.stages.cli import StageError, run_cli, stage_parser
from src.stages.pipeline_config import PipelineConfig
from src.stages.state import open_run

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
        from src.synthetic.generator import generate_benchmark

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
            if status != 0:  # a few lost training frames should not stop a run: say so and go on
                print(f"  warning: {split} download reported problems; see {root / split / 'failures.csv'}", flush=True)
            done["downloaded"].append(split)
        check_test_frames(root, cfg.allow_missing_test)
    if cfg.solution and not Path(cfg.solution).is_file():
        raise StageError(f"solution file {cfg.solution} not found")
    return done


def check_test_frames(root: Path, allow_missing: bool) -> None:
    """StageError when test ROIs have no frame in root/test/images (a warning with `allow_missing`)."""
    from src.data.cache import annotations_without_frames, download_command
    from src.data.coco import load_coco

    coco = load_coco(root / "dataset_test.json")
    missing = annotations_without_frames(coco, root / "test" / "images")
    if not missing:
        return
    what = (f"{len(missing)} of {len(coco.annotations)} test ROIs have no frame in {root / 'test' / 'images'} "
            f"(e.g. annotation {missing[0]}; see {root / 'test' / 'failures.csv'})")
    if not allow_missing:
        raise StageError(f"{what}: their predictions would come from black crops. Fetch the frames with "
                         f"`{download_command(root, 'test')}`, or set allow_missing_test: true to go on without them")
    print(f"  warning: {what}: predicted from black crops (allow_missing_test)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("prepare", __doc__)

    def body(cfg, args):
        with open_run(cfg, "prepare", args.wait):
            print(prepare(cfg))

    return run_cli(parser, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
