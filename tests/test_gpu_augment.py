"""Batched (GPU) augmentation: each op against a direct formula or OpenCV on tiny inputs, and distributional
equivalence with the albumentations path (src.data.transforms.TrainTransform) on fixed, seeded batches."""
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from albumentations.augmentations.pixel import functional as fpixel
from scipy.stats import ks_2samp

from src.config import AugmentConfig
from src.data.gpu_augment import (
    BRIGHTNESS,
    CONTRAST,
    RRC_RATIO,
    SATURATION,
    AugmentParams,
    BatchAugment,
    build_batch_augment,
    color_jitter,
    downscale,
    downscale_matrices,
    grey,
    normalize,
    resized_crop,
    rrc_boxes,
    sample_params,
    uint8_view,
)
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform, to_normalized_tensor

LEVEL = 1 / (255 * IMAGENET_STD.min())  # one grey level in normalised units (the largest channel's)
OFF = dict(rrc_scale=(1.0, 1.0), hflip=False, color_jitter=0.0, pca_lighting=0.0, downscale=None)


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: blurred colour noise plus a random gradient (structure at several scales)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), size / 12)
        noise = (noise - noise.mean()) * 3 + rng.uniform(60, 190, 3)
        ramp = (rng.uniform(-60, 60, 3) * xx[..., None] + rng.uniform(-60, 60, 3) * yy[..., None])
        out.append(np.clip(noise + ramp, 0, 255).astype(np.uint8))
    return np.stack(out)


def chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def levels(out: torch.Tensor) -> np.ndarray:
    """Normalised float (N, 3, H, W) back to grey levels (N, H, W, 3)."""
    x = out.permute(0, 2, 3, 1).numpy()
    return (x * IMAGENET_STD + IMAGENET_MEAN) * 255


def cpu_path(images: np.ndarray, repeats: int, size: int, seed: int = 0, **kw) -> torch.Tensor:
    """The albumentations path: every image `repeats` times, (len * repeats, 3, size, size)."""
    torch.manual_seed(seed)  # TrainTransform seeds albumentations from torch, and draws its PCA noise there
    tf = build_train_transform(size, **kw)
    return torch.stack([tf(images[i % len(images)]) for i in range(len(images) * repeats)])


def batch_path(images: np.ndarray, repeats: int, size: int, seed: int = 0, **kw) -> torch.Tensor:
    augment = BatchAugment(size, **kw)
    batch = torch.from_numpy(np.concatenate([images] * repeats))
    return augment(batch, torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# shapes, layouts, determinism


def test_shapes_dtypes_and_layouts():
    images = torch.from_numpy(smooth_images(4, 20))
    augment = BatchAugment(16, downscale=(0.5, 1.0))
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    same = augment(images.permute(0, 3, 1, 2).contiguous(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, out)  # (B, 3, H, W) input: the same result
    views = augment(images.view(2, 2, 20, 20, 3), torch.Generator().manual_seed(0))
    assert views.shape == (2, 2, 3, 16, 16)
    torch.testing.assert_close(views.view(4, 3, 16, 16), out)  # views are augmented like separate samples
    last = BatchAugment(16, channels_last=True)(images, torch.Generator().manual_seed(0))
    assert last.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        augment(images.float())
    with pytest.raises(ValueError, match="square"):
        augment(images[:, :, :10])


def test_deterministic_given_a_generator():
    images = torch.from_numpy(smooth_images(8, 24))
    augment = BatchAugment(16, downscale=(0.25, 1.0))
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_build_batch_augment_reads_the_config():
    cfg = AugmentConfig(rrc_scale=(0.3, 0.6), hflip=False, color_jitter=0.2, pca_lighting=0.0,
                        downscale=(0.5, 0.8), downscale_p=0.25, batched=True)
    augment = build_batch_augment(cfg, 32)
    assert (augment.size, augment.rrc_scale, augment.hflip, augment.color_jitter, augment.pca_lighting,
            augment.downscale, augment.downscale_p) == (32, (0.3, 0.6), False, 0.2, 0.0, (0.5, 0.8), 0.25)
    with pytest.raises(ValueError, match="downscale"):
        BatchAugment(32, downscale=(0.5, 1.5))


def test_uint8_view_is_the_raw_crop():
    view = smooth_images(1, 8)[0]
    out = uint8_view(view[:, ::-1])  # not contiguous
    assert out.dtype == torch.uint8 and np.array_equal(out.numpy(), view[:, ::-1])


# ----------------------------------------------------------------------------------------------------
# each op against a direct formula


def test_identity_settings_give_the_plain_resize_and_normalisation():
    images = smooth_images(3, 40)
    out = BatchAugment(32, **OFF)(torch.from_numpy(images), torch.Generator().manual_seed(0))
    plain = F.interpolate(chw(images), size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(out, normalize(plain), atol=1e-5, rtol=0)
    opencv = torch.stack([to_normalized_tensor(cv2.resize(im, (32, 32), interpolation=cv2.INTER_LINEAR))
                          for im in images])
    assert (out - opencv).abs().max() < 1.01 * LEVEL  # OpenCV rounds to uint8
    same_size = BatchAugment(40, **OFF)(torch.from_numpy(images))
    torch.testing.assert_close(same_size, torch.stack([to_normalized_tensor(im) for im in images]),
                               atol=1e-5, rtol=0)


GRID = dict(atol=1e-3, rtol=0)  # float rounding of the normalised sampling grid: < 1/1000 grey level


def test_flip_is_exact():
    x = chw(smooth_images(2, 12))
    boxes = torch.tensor([[0.0, 0.0, 12.0, 12.0], [2.0, 1.0, 9.0, 7.0]])
    out = resized_crop(x, boxes, torch.tensor([True, False]), 12)
    torch.testing.assert_close(out[0], x[0].flip(-1), **GRID)
    mirrored = resized_crop(x, boxes, torch.tensor([False, True]), 12)
    torch.testing.assert_close(mirrored[1], out[1].flip(-1), **GRID)  # a flip mirrors any resized crop


@pytest.mark.parametrize("box", [(3, 5, 20, 27), (0, 0, 40, 40), (10, 2, 7, 9), (33, 30, 7, 10)])
def test_crop_of_a_known_box_is_the_resized_sub_image(box):
    image = smooth_images(1, 40)[0]
    x0, y0, w, h = box
    out = resized_crop(chw(image[None]), torch.tensor([box], dtype=torch.float32), torch.tensor([False]), 32)
    reference = cv2.resize(image[y0:y0 + h, x0:x0 + w], (32, 32), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out[0].permute(1, 2, 0).numpy() - reference).max() < 1.0  # OpenCV's uint8 rounding
    exact = resized_crop(chw(image[None]), torch.tensor([[4.0, 6.0, 16.0, 16.0]]), torch.tensor([False]), 16)
    torch.testing.assert_close(exact[0], chw(image[None, 6:22, 4:20])[0], **GRID)  # same size: the sub-image itself


def test_each_jitter_op_follows_its_formula():
    x = chw(smooth_images(2, 10))
    g = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    torch.testing.assert_close(grey(x), g)
    f = torch.tensor([1.3, 0.6])
    expected = {BRIGHTNESS: f.view(2, 1, 1, 1) * x,
                CONTRAST: f.view(2, 1, 1, 1) * x + (1 - f.view(2, 1, 1, 1)) * g.mean(dim=(2, 3), keepdim=True),
                SATURATION: f.view(2, 1, 1, 1) * x + (1 - f.view(2, 1, 1, 1)) * g}
    for op, formula in expected.items():
        factors = torch.ones(2, 3)
        factors[:, op] = f
        order = torch.tensor([[op, (op + 1) % 3, (op + 2) % 3]] * 2)
        torch.testing.assert_close(color_jitter(x, factors, order), formula.clamp(0, 255))


def test_jitter_applies_the_ops_in_each_samples_order():
    x = chw(smooth_images(1, 10)).expand(2, -1, -1, -1)
    factors = torch.tensor([[1.4, 0.5, 1.0]] * 2)  # brightness (clips), contrast
    order = torch.tensor([[BRIGHTNESS, CONTRAST, SATURATION], [CONTRAST, BRIGHTNESS, SATURATION]])
    out = color_jitter(x, factors, order)

    def contrast(y, f):
        return (f * y + (1 - f) * grey(y).mean(dim=(2, 3), keepdim=True)).clamp(0, 255)

    torch.testing.assert_close(out[0], contrast((1.4 * x[0:1]).clamp(0, 255), 0.5)[0])
    torch.testing.assert_close(out[1], (1.4 * contrast(x[1:2], 0.5)).clamp(0, 255)[0])
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("op,function", [(BRIGHTNESS, fpixel.adjust_brightness_torchvision),
                                         (CONTRAST, fpixel.adjust_contrast_torchvision),
                                         (SATURATION, fpixel.adjust_saturation_torchvision)])
def test_jitter_ops_match_albumentations_within_its_uint8_rounding(op, function):
    image = smooth_images(1, 24)[0]
    for factor in (0.6, 1.3):
        factors = torch.ones(1, 3)
        factors[0, op] = factor
        out = color_jitter(chw(image[None]), factors, torch.tensor([[op, (op + 1) % 3, (op + 2) % 3]]))
        assert np.abs(out[0].permute(1, 2, 0).numpy() - function(image, factor)).max() < 1.0


@pytest.mark.parametrize("factor", [0.25, 0.3, 0.37, 0.5, 0.61, 0.9, 0.97])
def test_downscale_matches_opencv_area_then_linear(factor):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # noise: the hardest case
    out = downscale(chw(image[None]), torch.tensor([factor]))[0].permute(1, 2, 0).numpy()
    reference = fpixel.downscale(image, factor, cv2.INTER_AREA, cv2.INTER_LINEAR)  # what A.Downscale calls
    assert np.abs(out - reference).max() < 1.5  # two uint8 roundings in OpenCV
    m = downscale_matrices(torch.tensor([factor]), 32)[0]
    torch.testing.assert_close(m.sum(dim=1), torch.ones(32))  # weights sum to 1: flat images stay flat


def test_downscale_factor_one_and_near_one_are_the_identity():
    x = chw(smooth_images(2, 32))
    # round(32 * 0.99) = 32 pixels: OpenCV copies the image, and so does this path
    torch.testing.assert_close(downscale(x, torch.tensor([1.0, 0.99])), x)


def test_normalisation_and_lighting_are_exact():
    images = smooth_images(2, 8)
    lighting = torch.tensor([[0.01, -0.02, 0.03], [0.0, 0.0, 0.0]])
    out = normalize(chw(images), lighting)
    for i in range(2):
        torch.testing.assert_close(out[i], to_normalized_tensor(images[i], lighting[i].numpy()), atol=1e-5, rtol=0)


def test_rrc_boxes_follow_albumentations_algorithm():
    """The first attempt that fits is used, positions from the start draws; none fits: the whole image."""
    height = width = 40
    area_u = torch.tensor([[0.99, 0.2], [0.5, 0.5]])
    log_u = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    start_u = torch.tensor([[0.25, 0.75], [0.5, 0.0]])
    boxes = rrc_boxes(area_u, log_u, start_u, height, width, scale=(0.1, 1.0))
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for i, attempt in enumerate((1, 0)):  # sample 0: attempt 0 (area 0.991, ratio 4/3) is too wide
        area = (0.1 + 0.9 * float(area_u[i, attempt])) * height * width
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(log_u[i, attempt]))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        y0, x0 = int((height - h + 1) * float(start_u[i, 0])), int((width - w + 1) * float(start_u[i, 1]))
        assert boxes[i].tolist() == [x0, y0, w, h]
    whole = rrc_boxes(torch.full((3, 10), 0.5), torch.rand(3, 10), torch.rand(3, 2), 40, 40, scale=(1.0, 1.0))
    whole_allowed = rrc_boxes(torch.zeros(1, 10), torch.full((1, 10), 0.5), torch.zeros(1, 2), 40, 40, (1.0, 1.0))
    assert whole_allowed[0].tolist() == [0, 0, 40, 40]  # ratio exactly 1 fits on the first attempt
    assert (whole == torch.tensor([0.0, 0.0, 40.0, 40.0])).all()  # no other full-area crop fits: fallback


def test_sampled_parameters_stay_in_their_ranges():
    p = sample_params(4000, 40, 40, rrc_scale=(0.2, 0.7), hflip=False, color_jitter=0.3, downscale=(0.4, 0.8),
                      downscale_p=0.3, generator=torch.Generator().manual_seed(0))
    x0, y0, w, h = p.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 40).all() and (y0 + h <= 40).all()
    assert not p.flip.any()
    assert p.jitter.min() >= 0.7 and p.jitter.max() <= 1.3
    assert sorted(p.jitter_order[0].tolist()) == [0, 1, 2]
    applied = p.downscale < 1
    assert abs(applied.float().mean() - 0.3) < 0.03
    assert p.downscale[applied].min() >= 0.4 and p.downscale[applied].max() <= 0.8


# ----------------------------------------------------------------------------------------------------
# distributional equivalence with the albumentations path (seeded: deterministic, cannot flake)


def test_crop_boxes_match_albumentations_distribution():
    """Area fraction, aspect ratio and position of the crop boxes vs albumentations' own draws."""
    import albumentations as A

    n, size = 4000, 64
    rrc = A.RandomResizedCrop(size=(32, 32), scale=(0.1, 1.0))
    rrc.set_random_seed(0)
    ref = np.array([rrc.get_params_dependent_on_data({"shape": (size, size)}, {})["crop_coords"]
                    for _ in range(n)], dtype=float)  # x_min, y_min, x_max, y_max
    ref_w, ref_h = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    ours = sample_params(n, size, size, generator=torch.Generator().manual_seed(0)).boxes.double().numpy()
    stats = {
        "area": (ref_w * ref_h / size**2, ours[:, 2] * ours[:, 3] / size**2),
        "log_aspect": (np.log(ref_w / ref_h), np.log(ours[:, 2] / ours[:, 3])),
        "centre_x": ((ref[:, 0] + ref_w / 2) / size, (ours[:, 0] + ours[:, 2] / 2) / size),
    }
    for name, (a, b) in stats.items():
        assert abs(a.mean() - b.mean()) < 4 * math.sqrt((a.var() + b.var()) / n), name
        assert ks_2samp(a, b).statistic < 0.05, name


def coordinate_image(size: int = 128) -> np.ndarray:
    """R = x, G = y, B = 0: bilinear resampling keeps the values equal to the source coordinates."""
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([xx, yy, np.zeros_like(xx)], axis=2).astype(np.uint8)


def test_geometry_matches_albumentations_on_a_coordinate_image():
    """Crop extent (area fraction of the sampled source region) and flip rate, read from the outputs."""
    image = coordinate_image(128)[None]
    kw = dict(rrc_scale=(0.1, 1.0), hflip=True, color_jitter=0.0, pca_lighting=0.0)
    results = {}
    for name, path in (("albumentations", cpu_path), ("batched", batch_path)):
        lv = levels(path(image, 3000, 32, seed=1, **kw))
        xs, ys = lv[..., 0], lv[..., 1]
        extent = (xs.max(axis=(1, 2)) - xs.min(axis=(1, 2)) + 1) * (ys.max(axis=(1, 2)) - ys.min(axis=(1, 2)) + 1)
        flipped = xs[:, :, -1].mean(axis=1) < xs[:, :, 0].mean(axis=1)
        results[name] = (extent / 128**2, flipped)
    (area_a, flip_a), (area_b, flip_b) = results["albumentations"], results["batched"]
    assert 0.4 < area_a.mean() < 0.6 and 0.45 < flip_a.mean() < 0.55  # the measurement itself is sane
    assert abs(area_a.mean() - area_b.mean()) < 0.015
    assert ks_2samp(area_a, area_b).statistic < 0.05
    assert abs(flip_a.mean() - flip_b.mean()) < 0.04


def test_downscale_rate_and_strength_match_albumentations():
    """High-frequency energy of noise crops (no crop, no jitter): how often and how much it is removed."""
    images = np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    kw = dict(OFF, downscale=(0.25, 1.0), downscale_p=0.5)
    energy = {}
    for name, path in (("albumentations", cpu_path), ("batched", batch_path)):
        lv = levels(path(images, 128, 32, seed=2, **kw))
        energy[name] = np.abs(np.diff(lv, axis=2)).mean(axis=(1, 2, 3))
    base = np.abs(np.diff(images.astype(float), axis=2)).mean()
    rate_a, rate_b = (energy[k] < 0.9 * base for k in ("albumentations", "batched"))
    assert 0.4 < rate_a.mean() < 0.55  # p = 0.5, less the factors near 1 that change nothing
    assert abs(rate_a.mean() - rate_b.mean()) < 0.04
    assert ks_2samp(energy["albumentations"], energy["batched"]).statistic < 0.05


def test_brightness_spread_matches_albumentations():
    """On a flat grey image only brightness acts (contrast and saturation keep it): the output level / input."""
    images = np.full((1, 16, 16, 3), 100, dtype=np.uint8)
    kw = dict(OFF, color_jitter=0.4)
    spread = {name: levels(path(images, 2000, 16, seed=3, **kw)).mean(axis=(1, 2, 3)) / 100
              for name, path in (("albumentations", cpu_path), ("batched", batch_path))}
    a, b = spread["albumentations"], spread["batched"]
    assert abs(a.std() - 0.4 / math.sqrt(3)) < 0.02  # U(0.6, 1.4)
    assert abs(a.mean() - b.mean()) < 0.012 and abs(a.std() - b.std()) < 0.01
    assert ks_2samp(a, b).statistic < 0.05


def test_full_augmentation_output_statistics_match_albumentations():
    """The whole recipe (with down-scaling) on a fixed batch of crops: per-channel mean and std of the outputs,
    and the distributions of each sample's per-channel mean and std."""
    images = smooth_images(64, 40, seed=4)
    kw = dict(rrc_scale=(0.1, 1.0), hflip=True, color_jitter=0.4, pca_lighting=0.1, downscale=(0.25, 1.0),
              downscale_p=0.5)
    a = cpu_path(images, 32, 32, seed=5, **kw).numpy()
    b = batch_path(images, 32, 32, seed=5, **kw).numpy()
    for c in range(3):
        sa, sb = a[:, c].mean(axis=(1, 2)), b[:, c].mean(axis=(1, 2))
        standard_error = math.sqrt((sa.var() + sb.var()) / len(sa))
        # albumentations' jitter truncates to uint8 twice per image: about 1 grey level darker on average
        assert abs(sa.mean() - sb.mean()) < 1.5 * LEVEL + 4 * standard_error, c
        assert abs(a[:, c].std() - b[:, c].std()) < 0.05 * a[:, c].std(), c  # sampling spread ~3%
        assert ks_2samp(sa, sb).statistic < 0.06, c
        assert ks_2samp(a[:, c].std(axis=(1, 2)), b[:, c].std(axis=(1, 2))).statistic < 0.06, c


def albumentations_params(applied: list, n_jitter_ops: int = 3) -> dict:
    """TrainTransform's recorded draws (Compose applied_transforms) as one sample's AugmentParams fields."""
    steps = dict(applied)
    x_min, y_min, x_max, y_max = steps["RandomResizedCrop"]["crop_coords"]
    jitter = steps.get("ColorJitter", {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "order": [0, 1, 2]})
    return {"boxes": [x_min, y_min, x_max - x_min, y_max - y_min], "flip": "HorizontalFlip" in steps,
            "jitter": [jitter["brightness"], jitter["contrast"], jitter["saturation"]],
            "jitter_order": [k for k in jitter["order"] if k < n_jitter_ops],
            "downscale": steps.get("Downscale", {"scale": 1.0})["scale"], "lighting": [0.0, 0.0, 0.0]}


def test_same_draws_give_the_same_images_as_albumentations():
    """Paired: albumentations' own random draws, fed to the batched path, give each sample's image within
    OpenCV's uint8 rounding (crop resize, each jitter op, both down-scale resizes)."""
    images = smooth_images(16, 40, seed=6)
    kw = dict(rrc_scale=(0.1, 1.0), hflip=True, color_jitter=0.4, pca_lighting=0.0, downscale=(0.25, 1.0),
              downscale_p=0.5)
    torch.manual_seed(0)
    tf = build_train_transform(32, **kw)
    tf.compose.set_random_seed(0)
    tf.compose.save_applied_params = True
    outputs, draws = [], []
    for i in range(400):
        result = tf.compose(image=images[i % 16])
        outputs.append(result["image"])
        draws.append(albumentations_params(result["applied_transforms"]))
    params = AugmentParams(**{k: torch.tensor([d[k] for d in draws]) for k in draws[0]})
    params.boxes, params.jitter, params.downscale = params.boxes.float(), params.jitter.float(), params.downscale.float()
    assert 0.4 < params.flip.float().mean() < 0.6 and 0.4 < (params.downscale < 1).float().mean() < 0.6
    ours = BatchAugment(32, **kw).apply(chw(images[np.arange(400) % 16]), params)
    difference = levels(ours) - np.stack(outputs)
    assert abs(difference.mean()) < 1.5  # albumentations' truncation: about 1 level darker
    assert np.abs(difference).mean() < 1.5 and np.quantile(np.abs(difference), 0.999) < 5
