"""What a pipeline will train and what it costs, before it runs: trainings, images, FLOPs, GPU time, disk.

    python -m src.stages.plan CONFIG.yaml [overrides] [--images N] [--test-images N]

Per round: members x epochs x images per epoch (the train ROIs of data_root/dataset_train.json less the
validation share data.val_fraction; rounds >= 1 add at most every test ROI as a pseudo-label, an upper
bound). FLOPs per training image = 3 x the forward FLOPs of one input (forward + backward), counted by
torch.utils.flop_counter on the member's model built on the meta device (no memory, no weights). The GPU
time is an ESTIMATE FROM FLOPs, NOT MEASURED: total FLOPs / (one H100's 989 TFLOP/s dense bf16 peak x an
assumed 40 % utilisation); data loading may set a slower pace. Disk: model.pt (float32 weights and buffers),
checkpoint.pt (+ the optimizer's moments of the trainable parameters: 2 for AdamW, 1 for SGD), the probs
files (heads x ROIs x classes float32, test and validation) and the crop cache (ROIs x the sum over views of
size^2 x 3 bytes; data.view_sizes gives views their own input and crop sizes, counted in both), for the run as
it is kept (keep_checkpoints). The pipeline prints the same block before it trains (src.stages.pipeline).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from src.run_files import WEIGHTS_FILE
from src.stages.cli import run_cli, stage_parser
from src.stages.members import build_member_config
from src.stages.pipeline_config import PipelineConfig

H100_BF16_PEAK = 989e12  # FLOP/s, dense bf16 (NVIDIA's H100 SXM figure)
UTILISATION = 0.4  # assumed share of that peak a training reaches
OPTIMIZER_MOMENTS = {"adamw": 2, "sgd": 1}  # float32 tensors per parameter beside the weights in checkpoint.pt


@dataclass(frozen=True)
class RoundPlan:
    """One round's trainings: `members` trainings of `epochs` epochs over at most `images` images each."""

    round: int
    members: int
    epochs: int
    images: int  # per epoch (an upper bound for rounds >= 1: every test ROI pseudo-labelled)


@dataclass(frozen=True)
class Plan:
    name: str
    rounds: list[RoundPlan]
    n_train: int  # train ROIs of dataset_train.json
    n_val: int  # of them, held out for validation
    n_test: int | None  # test ROIs (None: unknown)
    forward_flops: float  # of one input
    numel: int  # parameters and buffers (model.pt)
    trainable: int  # parameters the optimizer updates (model.frozen_blocks leaves some out)
    disk: dict[str, float]  # bytes: model, checkpoint, probs (per member), cache, kept, peak
    keep_checkpoints: bool

    @property
    def trainings(self) -> int:
        return sum(r.members for r in self.rounds)

    @property
    def images_seen(self) -> int:
        return sum(r.members * r.epochs * r.images for r in self.rounds)

    @property
    def train_flops(self) -> float:
        return 3 * self.forward_flops * self.images_seen

    @property
    def gpu_seconds(self) -> float:
        return gpu_seconds(self.train_flops)


def gpu_seconds(flops: float, peak: float = H100_BF16_PEAK, utilisation: float = UTILISATION) -> float:
    """Seconds one GPU of `peak` FLOP/s needs for `flops` at `utilisation` of its peak (an estimate)."""
    return flops / (peak * utilisation)


def train_images(n_train: int, val_fraction: float) -> int:
    """Train ROIs left for training after the (frame-grouped, so approximate) validation share."""
    return round(n_train * (1 - val_fraction))


def disk_bytes(numel: int, optimizer: str, heads: int, classes: int, n_test: int, n_val: int, tta_views: int,
               n_rois: int, crop_sizes, trainings: int, keep_checkpoints: bool,
               trainable: int | None = None) -> dict[str, float]:
    """Bytes of one member's files and of the whole run as kept (float32 weights, uint8 crops of the given
    side per view); the optimizer's moments are kept for the `trainable` parameters (default: numel)."""
    model = 4 * numel
    checkpoint = model + 4 * OPTIMIZER_MOMENTS[optimizer] * (numel if trainable is None else trainable)
    copies = 1 + tta_views if tta_views > 1 else 1  # probs, and view_probs per TTA view when there are several
    probs = 4 * heads * classes * (n_test + n_val) * copies
    cache = n_rois * sum(size ** 2 for size in crop_sizes) * 3
    kept = trainings * (model + probs + (checkpoint if keep_checkpoints else 0)) + cache
    # while a member trains its checkpoint.pt exists, twice while it is rewritten (the old one stays until then)
    peak = kept + 2 * checkpoint - (checkpoint if keep_checkpoints else 0)
    return {"model": model, "checkpoint": checkpoint, "probs": probs, "cache": cache, "kept": kept, "peak": peak}


def count_rois(coco_path: Path) -> int:
    """The annotations (ROIs) of a COCO file."""
    return len(json.loads(Path(coco_path).read_text())["annotations"])


def model_cost(config) -> tuple[float, int, int]:
    """(forward FLOPs of one input, parameters + buffers, trainable parameters) of a training Config's model,
    built on the meta device: no memory, no weights loaded (model.pretrained and pretrained_path are ignored)."""
    import torch

    from src.models import build_model
    from src.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    config = config.model_copy(update={"model": config.model.model_copy(
        update={"pretrained": False, "pretrained_path": None})})
    aux = {rank: len(taxonomy.rank_labels(rank)[1]) for rank in config.model.aux_ranks}
    sizes = config.data.input_sizes()
    with torch.device("meta"):
        model = build_model(config, len(taxonomy.names), aux).eval()
        if len(set(sizes)) == 1:
            x = torch.zeros(1, len(sizes), 3, sizes[0], sizes[0])
        else:  # views of different sizes: the model takes a list of per-view tensors
            x = [torch.zeros(1, 3, size, size) for size in sizes]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return forward_flops(model, x), sum(t.numel() for t in model.state_dict().values()), trainable


def forward_flops(model, x) -> float:
    """FLOPs (2 per multiply-add) of model(x), as torch.utils.flop_counter counts them (matmuls and convolutions;
    works on meta tensors)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def make_plan(cfg: PipelineConfig, n_train: int | None = None, n_test: int | None = None) -> Plan:
    """The plan of a pipeline; n_train / n_test default to the ROIs of data_root's COCO files (FileNotFoundError
    when dataset_train.json is not there and n_train is not given; n_test None when unknown)."""
    from src.taxonomy import load_taxonomy

    root = Path(cfg.data_root)
    if n_train is None:
        if not (root / "dataset_train.json").is_file():
            raise FileNotFoundError(f"{root / 'dataset_train.json'} not found (the prepare step makes it): "
                                    "give the train set's size with --images N (the real data: 23699)")
        n_train = count_rois(root / "dataset_train.json")
    if n_test is None and (root / "dataset_test.json").is_file():
        n_test = count_rois(root / "dataset_test.json")
    first = build_member_config(cfg, 0, cfg.seeds[0])
    images = train_images(n_train, first.data.val_fraction)
    rounds = [RoundPlan(0, len(cfg.seeds), first.train.epochs, images)]
    for r in range(1, cfg.rounds + 1):
        warm = cfg.layout.member_dir(r - 1, cfg.seeds[0]) / WEIGHTS_FILE if cfg.warm_start else None
        later = build_member_config(cfg, r, cfg.seeds[0], cfg.layout.pseudo_labels(r).resolve(), warm)
        rounds.append(RoundPlan(r, len(cfg.seeds), later.train.epochs,
                                train_images(n_train, later.data.val_fraction) + (n_test or 0)))
    flops, numel, trainable = model_cost(first)
    n_val = n_train - images
    disk = disk_bytes(numel, first.optim.name, first.model.num_heads, len(load_taxonomy().names), n_test or 0, n_val,
                      len(first.train.tta_views), n_train + (n_test or 0), first.data.crop_sizes(),
                      sum(r.members for r in rounds), cfg.keep_checkpoints, trainable)
    return Plan(cfg.name, rounds, n_train, n_val, n_test, flops, numel, trainable, disk, cfg.keep_checkpoints)


def _count(n: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f}"


def _pflop(flops: float) -> str:
    return f"{flops / 1e15:,.0f}" if flops >= 10e15 else f"{flops / 1e15:.3g}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.2g} s"


def _gb(n: float) -> str:
    if n < 1e9:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e9:.2f} GB" if n < 100e9 else f"{n / 1e12:.2f} TB"


def format_plan(plan: Plan) -> str:
    """The block the pipeline and `python -m src.stages.plan` print."""
    r0, later = plan.rounds[0], plan.rounds[1:]
    n_rounds = len(plan.rounds)
    test = f"{plan.n_test:,}" if plan.n_test is not None else "unknown (0 counted; --test-images N)"
    epochs = f"{r0.epochs} (round 0)" + (f", {later[0].epochs} (rounds 1-{len(later)})" if later else "")
    images = f"{r0.images:,} ({plan.n_train:,} train ROIs less {plan.n_val:,} for validation)"
    if later:
        images += f"; rounds >= 1: at most {later[0].images:,} (+ every one of the {test} test ROIs " \
                  "pseudo-labelled: an upper bound)"
    d = plan.disk
    kept = "kept" if plan.keep_checkpoints else "removed after each member (keep_checkpoints=true keeps them)"
    per_training = plan.gpu_seconds / plan.trainings
    return "\n".join([
        f"[plan {plan.name}] will train {r0.members} members x {n_rounds} trainings (round 0 + {n_rounds - 1} "
        f"self-training rounds) = {plan.trainings} trainings",
        f"  epochs per training: {epochs}",
        f"  images per epoch: {images}",
        f"  images in all: ~{_count(plan.images_seen)} (an upper bound with pseudo-labels)",
        f"  forward: {plan.forward_flops / 1e9:.4g} GFLOP per image (x3 with the backward: "
        f"{3 * plan.forward_flops / 1e9:.4g} GFLOP per training image); {_pflop(plan.train_flops)} PFLOP in all",
        f"  estimated GPU time (estimate from FLOPs, not measured; one H100 at {UTILISATION:.0%} of its "
        f"{H100_BF16_PEAK / 1e12:.0f} TFLOP/s bf16 dense peak): ~{_duration(plan.gpu_seconds)} in all, "
        f"~{_duration(per_training)} per training; data loading may be slower",
        f"  disk: ~{_gb(d['kept'])} kept, ~{_gb(d['peak'])} at the peak ({plan.numel / 1e6:,.2f} M parameters and "
        f"buffers, {plan.trainable / 1e6:,.2f} M trainable; per member model.pt {_gb(d['model'])}, probs {_gb(d['probs'])}; checkpoint.pt "
        f"{_gb(d['checkpoint'])}, {kept}; crop cache {_gb(d['cache'])})",
    ])


def show_plan(cfg: PipelineConfig) -> bool:
    """Print the plan when data_root holds dataset_train.json; returns whether it did."""
    if not (Path(cfg.data_root) / "dataset_train.json").is_file():
        return False
    print(format_plan(make_plan(cfg)), flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("plan", __doc__)
    parser.add_argument("--images", type=int, default=None,
                        help="train ROIs to plan for (default: those of data_root/dataset_train.json; real data: 23699)")
    parser.add_argument("--test-images", type=int, default=None,
                        help="test ROIs, the pseudo-label bound (default: those of data_root/dataset_test.json; "
                             "real data: 788)")
    return run_cli(parser, lambda cfg, args: print(format_plan(make_plan(cfg, args.images, args.test_images))), argv)


if __name__ == "__main__":
    raise SystemExit(main())
