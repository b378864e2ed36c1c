"""Train and eval transforms: uint8 HWC RGB array -> ImageNet-normalised float CHW tensor.

Geometry and colour run on uint8 with albumentations/OpenCV; PCA lighting (AlexNet-style, ImageNet
eigenvectors) and normalisation run on the float result. Inputs that are not square are first padded to a
square (src.data.crops.fit_square), so an object is never squashed. The team's torchvision/PIL pipeline is
kept as `build_torchvision_train_transform` for the speed comparison in bench/bench_data.py.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from src.data.crops import fit_square, one_or_per_view

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Principal components of ImageNet RGB pixels (AlexNet's lighting noise), as in the team's code.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], dtype=np.float32)


def to_normalized_tensor(image: np.ndarray, lighting: np.ndarray | None = None) -> torch.Tensor:
    """uint8 HWC RGB -> float32 CHW, ImageNet-normalised; `lighting` (3,) is added in [0, 1] units first."""
    shift = IMAGENET_MEAN if lighting is None else IMAGENET_MEAN - lighting
    # transpose the uint8 array first and work in place: about 6x faster than float HWC broadcasting
    x = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    x *= (1.0 / (255.0 * IMAGENET_STD))[:, None, None]
    x -= (shift / IMAGENET_STD).astype(np.float32)[:, None, None]
    return torch.from_numpy(x)


def downscale(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrink by `factor` (area) and enlarge back (linear): same shape, resolution of a smaller object."""
    if factor >= 1.0:
        return image
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(image.shape)


def check_downscale_range(downscale) -> tuple[float, float]:
    """(min_factor, max_factor) as floats; ValueError unless 0 < min <= max <= 1."""
    lo, hi = (float(v) for v in downscale)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"downscale must be (min_factor, max_factor) within (0, 1], got {downscale}")
    return lo, hi


def _square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    return image if h == w == size else fit_square(image, size)


# Seed offset between the random streams of the transforms of views of different sizes (ViewTransforms)
STREAM_SEED_STEP = 0x9E3779B1


class TrainTransform:
    """Random resized crop, flip, colour jitter, optional random down-scaling, PCA lighting, normalisation.

    `stream` k > 0 offsets every seed it is given (a transform per view size, ViewTransforms), so that
    transforms seeded alike draw apart."""

    def __init__(self, size: int, rrc_scale=(0.1, 1.0), hflip: bool = True, color_jitter: float = 0.4,
                 pca_lighting: float = 0.1, downscale=None, downscale_p: float = 0.5, stream: int = 0):
        self.size = size
        self.pca_lighting = pca_lighting
        self.stream = stream
        ops = [A.RandomResizedCrop(size=(size, size), scale=tuple(rrc_scale))]
        if hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if color_jitter:
            ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                     hue=0.0, p=1.0))
        if downscale is not None:
            lo, hi = check_downscale_range(downscale)
            ops.append(A.Downscale(scale_range=(lo, hi), p=downscale_p,
                                   interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}))
        self.compose = A.Compose(ops)
        self._pid = None

    def _reseed_per_process(self) -> None:
        # albumentations draws its seed once, at construction; DataLoader workers are forked copies and
        # would all apply the same "random" augmentations. torch seeds each worker differently (and the
        # main process from torch.manual_seed): take the seed from torch, once per process.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self.set_random_seed(torch.initial_seed())

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed((seed + self.stream * STREAM_SEED_STEP) % 2**32)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        self._reseed_per_process()
        out = self.compose(image=_square(image, max(image.shape[:2])))["image"]
        lighting = None
        if self.pca_lighting:
            alpha = torch.randn(3).numpy() * self.pca_lighting
            lighting = IMAGENET_EIGVEC @ (alpha * IMAGENET_EIGVAL)
        return to_normalized_tensor(out, lighting)


class EvalTransform:
    """Square to `size` (pad, never squash), optional horizontal flip and fixed down-scaling, normalisation."""

    def __init__(self, size: int, downscale_factor: float | None = None, hflip: bool = False):
        if downscale_factor is not None and not 0 < downscale_factor <= 1:
            raise ValueError(f"downscale_factor must be in (0, 1], got {downscale_factor}")
        self.size = size
        self.downscale_factor = downscale_factor
        self.hflip = hflip

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        image = _square(image, self.size)
        if self.hflip:
            image = image[:, ::-1]
        if self.downscale_factor is not None:
            image = downscale(np.ascontiguousarray(image), self.downscale_factor)
        return to_normalized_tensor(image)


class ViewTransforms:
    """One transform per crop view, for views of different output sizes (data.view_sizes); the views of one
    size share one transform. `transforms[k]` transforms view k; `set_random_seed` gives each size its own
    random stream (TrainTransform's `stream`)."""

    def __init__(self, build: Callable[[int, int], Callable], sizes: Sequence[int]):
        by_size: dict[int, Callable] = {}
        for size in sizes:
            if size not in by_size:
                by_size[size] = build(size, len(by_size))
        self.transforms = tuple(by_size[size] for size in sizes)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, view: int) -> Callable:
        return self.transforms[view]

    def set_random_seed(self, seed: int) -> None:
        for transform in dict.fromkeys(self.transforms):  # each distinct one once
            if hasattr(transform, "set_random_seed"):
                transform.set_random_seed(seed)


def per_view(build: Callable[[int, int], Callable], size: int | Sequence[int]):
    """`build(size, 0)` when every view has one size (an int, or equal sizes), else a ViewTransforms over
    `build(size, stream)`, one per distinct size."""
    one = one_or_per_view(size)
    return build(one, 0) if isinstance(one, int) else ViewTransforms(build, one)


def build_train_transform(size: int | Sequence[int], rrc_scale=(0.1, 1.0), hflip: bool = True,
                          color_jitter: float = 0.4, pca_lighting: float = 0.1, downscale=None,
                          downscale_p: float = 0.5) -> TrainTransform | ViewTransforms:
    """The team's train augmentation (docs/method.md section 5), plus optional random down-scaling by a factor
    drawn from U(min_factor, max_factor) with probability downscale_p (the 1st place's test-size trick).
    `size`: the output size, or one per view (`per_view`)."""
    return per_view(lambda s, stream: TrainTransform(s, rrc_scale, hflip, color_jitter, pca_lighting, downscale,
                                                     downscale_p, stream), size)


def build_eval_transform(size: int | Sequence[int], downscale_factor: float | None = None):
    """Eval transform (`size`: one, or one per view); `downscale_factor` < 1 simulates smaller objects
    (shifted validation)."""
    return per_view(lambda s, _: EvalTransform(s, downscale_factor), size)


_TTA_VIEW = re.compile(r"(identity)|(hflip)|(hflip_)?down(\d\d)")


def parse_tta_view(name: str) -> tuple[bool, float | None]:
    """(hflip, downscale factor or None) of a test-time view name: identity, hflip, down<NN> (shrunk to NN %
    of its side and enlarged back, NN in 10..99), hflip_down<NN>; ValueError naming the valid forms."""
    match = _TTA_VIEW.fullmatch(str(name))
    if not match or (match[4] and int(match[4]) < 10):
        raise ValueError(f"unknown test-time view {name!r}; valid: identity, hflip, down<NN>, hflip_down<NN> "
                         "(NN in 10..99, e.g. down75)")
    return bool(match[2] or match[3]), (int(match[4]) / 100 if match[4] else None)


def build_tta_transform(size: int | Sequence[int], view: str):
    """The eval transform of one test-time view (`parse_tta_view`); 'identity' is `build_eval_transform(size)`.
    `size`: one, or one per crop view."""
    hflip, factor = parse_tta_view(view)
    return per_view(lambda s, _: EvalTransform(s, factor, hflip), size)


def build_torchvision_train_transform(size: int, color_jitter: float = 0.4):
    """The team's PIL/torchvision pipeline (resize, random resized crop, flip, jitter, normalise).

    Kept as the baseline of the speed comparison; it squashes non-square crops as theirs did."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize((size, size)),
        T.RandomResizedCrop(size, scale=(0.1, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(color_jitter, color_jitter, color_jitter),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist()),
    ])
