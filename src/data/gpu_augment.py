"""The training augmentation as batched tensor ops on a uint8 batch, on the batch's device (CPU or CUDA).

`build_batch_augment(cfg.augment, image_size, device)` returns a callable: uint8 crops (B, H, W, 3) or
(B, 3, H, W) (or (B, V, ...) with V views, each augmented independently) -> ImageNet-normalised float32
(B, 3, S, S) (resp. (B, V, 3, S, S)); with one output size per view (data.view_sizes), a list of V uint8
(B, H_v, W_v, 3) views -> a list of V float32 (B, 3, S_v, S_v), each view augmented at its own size. It does
what `src.data.transforms.TrainTransform` (the albumentations path) does per sample, with the same config keys,
parameter distributions and order:

  1. random resized crop: area fraction ~ U(rrc_scale), log aspect ratio ~ U(log 3/4, log 4/3), 10 attempts,
     then the whole (square) image; bilinear resize to S with OpenCV's INTER_LINEAR sampling (pixel centres,
     coordinates clamped to the crop, no antialiasing); 2. horizontal flip with probability 0.5;
  3. colour jitter: brightness, contrast, saturation factors ~ U(max(0, 1 - c), 1 + c), applied in a random
     order per sample, each clipped to [0, 255]; contrast blends with the mean of the grey image, saturation
     with the grey image (grey = 0.299 R + 0.587 G + 0.114 B); no hue (TrainTransform uses hue 0);
  4. random down-scaling with probability downscale_p by a factor f ~ U(downscale): shrink to round(S f)
     pixels with OpenCV's INTER_AREA weights (cells 1/f wide) and enlarge back with INTER_LINEAR, as
     albumentations' Downscale; the two resizes are one (S, S) matrix per sample, applied as x -> M x M^T;
  5. PCA lighting (AlexNet: ImageNet eigenvectors, alpha ~ N(0, pca_lighting^2)) and normalisation.

Where it is not bit-identical to the albumentations path, and why:
  - the albumentations path works on uint8 and rounds or truncates after every step (the crop resize, each
    jitter op, both down-scale resizes); here every step stays in float, so outputs differ by up to a few
    grey levels per pixel; the truncation of albumentations' brightness and contrast LUTs makes its images
    darker by about half a level per op on average, which this path does not copy;
  - OpenCV resizes uint8 with 11-bit fixed-point weights; here the weights are exact floats. On CUDA with
    TF32 matmuls allowed (as the training loop sets), the down-scale matmul rounds to ~1e-3 relative;
  - the random draws come from a torch.Generator, not albumentations' Python RNG: same distributions,
    different streams. Crop, flip, jitter, down-scale and lighting draws are made on the CPU with the
    given (CPU) generator and then moved to the device, so a seed gives the same augmentation on CPU and CUDA.
Inputs must be square, as the crop cache's are (TrainTransform pads non-square inputs first).

With augment.batched (src.data.training), the training DataLoader returns raw uint8 crops:
`CropCacheDataset(crops, labels, transform=uint8_view)` yields (V, S, S, 3) uint8 tensors per item (batched
(B, V, S, S, 3)), and the loop calls the augmentation after moving the batch to the training device (a GPU,
or the CPU, where at 32 px it is also faster than albumentations per sample: bench/bench_augment.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from src.data.crops import one_or_per_view
from src.data.transforms import IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN, IMAGENET_STD, check_downscale_range

RRC_RATIO = (3 / 4, 4 / 3)  # albumentations' RandomResizedCrop default, which TrainTransform keeps
RRC_ATTEMPTS = 10           # albumentations tries 10 (area, ratio) draws before the fallback
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # OpenCV's RGB2GRAY, used by albumentations' contrast and saturation
BRIGHTNESS, CONTRAST, SATURATION = range(3)


def uint8_view(view: np.ndarray) -> torch.Tensor:
    """Dataset transform for augment.batched: the cached uint8 (S, S, 3) view as a tensor, unchanged."""
    return torch.from_numpy(np.ascontiguousarray(view))


@dataclass
class AugmentParams:
    """Per-sample random draws of one batch (N samples).

    boxes (N, 4) float: crop x0, y0, width, height in input pixels; flip (N,) bool; jitter (N, 3) float:
    brightness, contrast, saturation factors; jitter_order (N, 3) long: the order of the three ops;
    downscale (N,) float: factor, 1 = none; lighting (N, 3) float: PCA shift added in [0, 1] units."""

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    jitter_order: torch.Tensor
    downscale: torch.Tensor
    lighting: torch.Tensor

    def to(self, device) -> "AugmentParams":
        return AugmentParams(**{f.name: to_device(getattr(self, f.name), device) for f in fields(self)})


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """t on `device`; CPU -> CUDA through pinned memory, so that the copy does not wait for the GPU's queue."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@functools.lru_cache(maxsize=None)
def _imagenet_mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: a host-to-device copy in every call would wait for the GPU's queue
    return torch.as_tensor(IMAGENET_MEAN, device=device), torch.as_tensor(IMAGENET_STD, device=device)


def rrc_boxes(area_u: torch.Tensor, log_ratio_u: torch.Tensor, start_u: torch.Tensor, height: int, width: int,
              scale=(0.1, 1.0), ratio=RRC_RATIO) -> torch.Tensor:
    """Crop boxes (N, 4) = x0, y0, w, h of albumentations' RandomResizedCrop from uniform draws.

    area_u, log_ratio_u (N, attempts) and start_u (N, 2) (y, x) are U[0, 1) draws. The first attempt
    whose rounded size fits is used; with none, the centre crop of albumentations' fallback."""
    area = height * width
    target = (scale[0] + (scale[1] - scale[0]) * area_u.double()) * area
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * log_ratio_u.double())
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, as Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.double().argmax(dim=1, keepdim=True)  # first fitting attempt (0 when none fits)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    y0 = torch.floor((height - h + 1) * start_u[:, 0].double())
    x0 = torch.floor((width - w + 1) * start_u[:, 1].double())
    # fallback: the whole image if its ratio is allowed, else the centred crop of the nearest allowed ratio
    in_ratio = width / height
    fb_w, fb_h = width, height
    if in_ratio < ratio[0]:
        fb_h = round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fb_w = round(height * ratio[1])
    found = fits.any(dim=1)
    boxes = torch.stack([torch.where(found, x0, float((width - fb_w) // 2)),
                         torch.where(found, y0, float((height - fb_h) // 2)),
                         torch.where(found, w, float(fb_w)), torch.where(found, h, float(fb_h))], dim=1)
    return boxes.float()


def sample_params(n: int, height: int, width: int, rrc_scale=(0.1, 1.0), hflip: bool = True,
                  color_jitter: float = 0.4, pca_lighting: float = 0.1, downscale=None, downscale_p: float = 0.5,
                  generator: torch.Generator | None = None) -> AugmentParams:
    """Draw one batch's augmentation parameters on the CPU (same number of draws whatever is disabled)."""
    g = dict(generator=generator)
    area_u, log_ratio_u = torch.rand(n, RRC_ATTEMPTS, **g), torch.rand(n, RRC_ATTEMPTS, **g)
    start_u = torch.rand(n, 2, **g)
    flip_u = torch.rand(n, **g)
    jitter_u, order_keys = torch.rand(n, 3, **g), torch.rand(n, 3, **g)
    ds_apply_u, ds_factor_u = torch.rand(n, **g), torch.rand(n, **g)
    alpha = torch.randn(n, 3, **g)

    boxes = rrc_boxes(area_u, log_ratio_u, start_u, height, width, tuple(rrc_scale))
    low = max(0.0, 1.0 - color_jitter)
    jitter = low + (1.0 + color_jitter - low) * jitter_u
    factors = torch.ones(n)
    if downscale is not None:
        lo, hi = check_downscale_range(downscale)
        factors = torch.where(ds_apply_u < downscale_p, lo + (hi - lo) * ds_factor_u, factors)
    eigvec, eigval = torch.from_numpy(IMAGENET_EIGVEC), torch.from_numpy(IMAGENET_EIGVAL)
    lighting = (alpha * pca_lighting * eigval) @ eigvec.T
    flip = flip_u < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return AugmentParams(boxes=boxes, flip=flip, jitter=jitter,
                         jitter_order=order_keys.argsort(dim=1), downscale=factors, lighting=lighting)


def _crop_coords(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size) source coordinates of INTER_LINEAR resizing `length` pixels from `start` to `size`."""
    u = torch.arange(size, device=start.device, dtype=torch.float32)
    inside = ((u + 0.5) * (length[:, None] / size) - 0.5).clamp(min=0)
    return start[:, None] + torch.minimum(inside, (length - 1)[:, None])


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes (N, 4: x0, y0, w, h) of float x (N, C, H, W), resize each to (size, size), flip where asked.

    Bilinear sampling at OpenCV INTER_LINEAR's positions, clamped to the crop (grid_sample)."""
    n, _, height, width = x.shape
    xs = _crop_coords(boxes[:, 0], boxes[:, 2], size)
    ys = _crop_coords(boxes[:, 1], boxes[:, 3], size)
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    gx = (xs + 0.5) * (2.0 / width) - 1.0  # align_corners=False: pixel centres at (i + 0.5) / W * 2 - 1
    gy = (ys + 0.5) * (2.0 / height) - 1.0
    grid = torch.stack([gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) grey with OpenCV's weights."""
    r, g, b = GREY_WEIGHTS  # a weighted sum: einsum / conv2d are several times slower here on a CPU
    return x[:, 0:1] * r + x[:, 1:2] * g + x[:, 2:3] * b


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision-style jitter of float RGB x (N, 3, H, W) in [0, 255]; factors (N, 3), order (N, 3).

    Every op is x -> clip(f x + (1 - f) t, 0, 255) with target t = 0 (brightness), the mean grey level
    (contrast) or the grey image (saturation); each of the 3 slots applies sample n's op order[n, slot]."""
    n = x.shape[0]
    for slot in range(3):
        op = order[:, slot].view(n, 1, 1, 1)
        f = factors.gather(1, order[:, slot:slot + 1]).view(n, 1, 1, 1)
        g = grey(x)
        target = torch.where(op == SATURATION, g, torch.where(op == CONTRAST, g.mean(dim=(2, 3), keepdim=True), 0.0))
        x = torch.lerp(target, x, f).clamp_(0, 255)  # f x + (1 - f) t in one pass over the batch
    return x


def downscale_matrices(factors: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size, size) matrices M: M x M^T shrinks a (size, size) image by factor f and enlarges it back.

    Shrink: OpenCV INTER_AREA to n = round(size f) pixels, output pixel j averaging the input interval
    [j / f, (j + 1) / f) (the last one cut at the border); enlarge: INTER_LINEAR from n back to size.
    Factor 1 (or any factor with n = size, where OpenCV copies) gives the identity."""
    f = factors.float()[:, None, None]
    n = torch.round(size * f).clamp(1, size)
    j = torch.arange(size, device=factors.device, dtype=torch.float32)
    # shrink A (N, small j, input i)
    lo = j[None, :, None] / f
    hi = ((j[None, :, None] + 1) / f).clamp(max=size)
    overlap = (torch.minimum(j[None, None, :] + 1, hi) - torch.maximum(j[None, None, :], lo)).clamp(min=0)
    shrink = overlap / (hi - lo).clamp(min=1e-6) * (j[None, :, None] < n)
    # enlarge U (N, output i, small j)
    coord = torch.minimum(((j[None, :, None] + 0.5) * n / size - 0.5).clamp(min=0), n - 1)
    below = coord.floor()
    frac = coord - below
    above = torch.minimum(below + 1, n - 1)
    small = j[None, None, :]
    enlarge = (small == below) * (1 - frac) + (small == above) * frac
    eye = torch.eye(size, device=factors.device)
    return torch.where(n == size, eye, enlarge @ shrink)


def downscale(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Shrink each square image of x (N, C, S, S) by its factor (N,) and enlarge it back (see above)."""
    m = downscale_matrices(factors, x.shape[-1])[:, None]
    return m @ x @ m.transpose(-1, -2)


def normalize(x: torch.Tensor, lighting: torch.Tensor | None = None) -> torch.Tensor:
    """(x / 255 + lighting - mean) / std per channel, for float x (N, 3, H, W) in [0, 255], lighting (N, 3)."""
    mean, std = _imagenet_mean_std(x.device)
    shift = -mean / std if lighting is None else (lighting - mean) / std
    return torch.addcmul(shift.reshape(-1, 3, 1, 1), x, (1.0 / (255.0 * std))[:, None, None])


class BatchAugment:
    """The train augmentation of one config as a callable on uint8 batches (see the module docstring).

    `size`: the output size, or one per view (then the batches are lists of per-view tensors)."""

    def __init__(self, size: int | tuple[int, ...], rrc_scale=(0.1, 1.0), hflip: bool = True,
                 color_jitter: float = 0.4, pca_lighting: float = 0.1, downscale=None, downscale_p: float = 0.5,
                 device="cpu", channels_last: bool = False):
        if downscale is not None:
            check_downscale_range(downscale)
        self.view_sizes = None if isinstance(size, int) else tuple(size)
        self.size = size if isinstance(size, int) else None
        self.rrc_scale, self.hflip = tuple(rrc_scale), hflip
        self.color_jitter, self.pca_lighting = color_jitter, pca_lighting
        self.downscale, self.downscale_p = downscale, downscale_p
        self.device, self.channels_last = torch.device(device), channels_last

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> AugmentParams:
        return sample_params(n, height, width, self.rrc_scale, self.hflip, self.color_jitter, self.pca_lighting,
                             self.downscale, self.downscale_p, generator)

    def apply(self, x: torch.Tensor, params: AugmentParams, size: int | None = None) -> torch.Tensor:
        """Augment uint8 or float (N, 3, H, W) in [0, 255] with given parameters -> float (N, 3, S, S)
        (S: `size`, default self.size).

        Only the samples drawn for down-scaling are down-scaled; their indices are found where the
        parameters are (on the CPU when sampled by __call__), so nothing waits for the device."""
        shrunk = torch.nonzero(params.downscale < 1)[:, 0] if self.downscale is not None else None
        params = params.to(x.device)
        x = resized_crop(x.float(), params.boxes, params.flip, size or self.size)
        if self.color_jitter:
            x = color_jitter(x, params.jitter, params.jitter_order)
        if shrunk is not None and len(shrunk):
            shrunk = to_device(shrunk, x.device)
            x[shrunk] = downscale(x[shrunk], params.downscale[shrunk])
        return normalize(x, params.lighting if self.pca_lighting else None)

    def __call__(self, batch, generator: torch.Generator | None = None):
        """uint8 (B, [V,] H, W, 3) or (B, [V,] 3, H, W) -> float32 (B, [V,] 3, S, S) on self.device; with per-view
        sizes, a list of V uint8 views (B, H_v, W_v, 3) -> a list of float32 (B, 3, S_v, S_v), drawn view by view.

        generator: a CPU torch.Generator (None: torch's default one)."""
        if self.view_sizes is not None:
            if not isinstance(batch, (list, tuple)) or len(batch) != len(self.view_sizes):
                raise ValueError(f"expected a list of {len(self.view_sizes)} views (sizes {self.view_sizes}), "
                                 f"got {type(batch).__name__}")
            return [self._augment(view, size, generator) for view, size in zip(batch, self.view_sizes)]
        return self._augment(batch, self.size, generator)

    def _augment(self, batch: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
        if batch.dtype != torch.uint8 or batch.dim() not in (4, 5):
            raise ValueError(f"expected a uint8 (B, [V,] H, W, 3) batch, got {batch.dtype} {tuple(batch.shape)}")
        lead = batch.shape[:-3]
        x = batch.reshape(-1, *batch.shape[-3:]).to(self.device, non_blocking=True)
        if x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)  # HWC -> CHW view; the float copy below keeps channels-last strides
        elif x.shape[1] != 3:
            raise ValueError(f"expected 3 channels first or last, got {tuple(batch.shape)}")
        height, width = x.shape[-2:]
        if height != width:
            raise ValueError(f"inputs must be square (the crop cache's are), got {height}x{width}")
        out = self.apply(x, self.sample(x.shape[0], height, width, generator), size).reshape(*lead, 3, size, size)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last and out.dim() == 4 else out


def build_batch_augment(cfg_augment, image_size: int | tuple[int, ...], device="cpu",
                        channels_last: bool = False) -> BatchAugment:
    """The batched train augmentation for an AugmentConfig (src.config) at output size image_size (one per view
    when the views' sizes differ)."""
    a = cfg_augment
    return BatchAugment(one_or_per_view(image_size), rrc_scale=tuple(a.rrc_scale), hflip=a.hflip,
                        color_jitter=a.color_jitter, pca_lighting=a.pca_lighting, downscale=a.downscale,
                        downscale_p=a.downscale_p, device=device, channels_last=channels_last)
