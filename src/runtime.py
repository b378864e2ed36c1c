"""Where a training process runs and how its random streams are seeded.

`setup_runtime` joins torchrun's process group (when WORLD_SIZE > 1) and picks the device; the seeding
helpers derive every random stream (python, numpy, torch, DataLoader workers, albumentations) from one
integer, so an epoch's batches and augmentations depend only on (seed, epoch, rank).
"""
from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, Subset

# The packages whose versions decide a run's numbers on a given machine (kernels, augmentation, decoding).
NUMERIC_PACKAGES = ("torch", "torchvision", "timm", "numpy", "opencv-python-headless", "albumentations", "albucore",
                    "Pillow", "scipy")


def package_versions(names: tuple[str, ...] = NUMERIC_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_environment(device: torch.device) -> dict:
    """What a run's numbers depend on besides its seed and config: the processor that computed them (CPU
    kernels differ between CPU models; GPUs differ again) and the numeric packages' versions. The same seed
    and config reproduce a run exactly only where all of these are the same."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu_model(), "gpu": gpu, "packages": package_versions()}


@dataclass
class Runtime:
    """This process's rank, the world size, its device, and whether it created the process group."""

    rank: int
    world: int
    device: torch.device
    owns_process_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class DeviceError(ValueError):
    """A device or precision was asked for that this machine does not have (a one-line error, exit code 2)."""


def pick_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a train.device / --device value: 'auto' picks cuda:<local_rank> when CUDA is
    available, else the CPU; 'cuda' is cuda:<local_rank>. A device asked for by name that is missing (CUDA
    unavailable, an index beyond the GPUs present, an unknown name) is a DeviceError, never a silent CPU run."""
    name = str(device)
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    except RuntimeError:
        raise DeviceError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for but CUDA is not available on this machine; "
                              "use device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} "
                              "GPU(s)")
    elif dev.type != "cpu":
        raise DeviceError(f"device {name!r}: only auto, cpu and cuda[:N] are supported")
    return dev


def check_amp(amp: str, device: torch.device) -> None:
    """train.amp bf16/fp16 need a CUDA device: on the CPU training runs in float32 (amp auto or off), and an
    explicit mixed precision there would be ignored silently, so it is a DeviceError."""
    if amp in ("bf16", "fp16") and device.type != "cuda":
        raise DeviceError(f"train.amp={amp} needs a CUDA device, the run is on {device}: on the CPU training runs "
                          "in float32; set train.amp=auto or off")


def setup_runtime(device: str) -> Runtime:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU); pick the device
    (`pick_device`: DeviceError when the one asked for is missing)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Runtime(rank, world, dev, owns)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of every random stream of one epoch on one rank."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**31


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reseed_transforms(dataset, seed: int) -> None:
    """Reseed the (albumentations) transforms inside a dataset tree; they keep their own generators."""
    if isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            reseed_transforms(part, seed)
    elif isinstance(dataset, Subset):
        reseed_transforms(dataset.dataset, seed)
    else:
        transform = getattr(dataset, "transform", None)  # TrainTransform, ViewTransforms or an A.Compose
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive every random stream of the worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    reseed_transforms(torch.utils.data.get_worker_info().dataset, seed)


def rng_states(generator: torch.Generator) -> dict:
    """Every random stream's state (python, numpy, torch, CUDA, the DataLoader's generator)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # as plain data: checkpoints hold no numpy objects
    return {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loader": generator.get_state()}


def set_rng_states(states: dict, generator: torch.Generator) -> None:
    """Restore what `rng_states` saved."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["loader"])
