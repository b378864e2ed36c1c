"""Frame-grouped validation split, shifted-validation factors, and the transforms they feed."""
import cv2
import numpy as np
import pytest
import torch

from src.data.splits import frame_grouped_split, shifted_downscale_factors
from src.data.transforms import build_eval_transform, build_train_transform, downscale


def grouped_labels(n_frames=200, seed=0):
    """Frames with 1..5 ROIs of mostly one class each, 10 classes."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for frame in range(n_frames):
        main = frame % 10
        for _ in range(rng.integers(1, 6)):
            labels.append(main if rng.random() < 0.8 else rng.integers(10))
            groups.append(1000 + frame)
    return np.array(labels), np.array(groups)


def test_split_keeps_frames_whole_and_stratifies():
    labels, groups = grouped_labels()
    train_idx, val_idx = frame_grouped_split(labels, groups, 0.2, seed=0)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(len(labels)))
    assert not set(groups[train_idx]) & set(groups[val_idx])
    assert 0.15 < len(val_idx) / len(labels) < 0.25
    assert set(labels[val_idx]) == set(range(10))  # every class is validated
    again = frame_grouped_split(labels, groups, 0.2, seed=0)
    np.testing.assert_array_equal(again[1], val_idx)
    assert not np.array_equal(frame_grouped_split(labels, groups, 0.2, seed=1)[1], val_idx)


def test_split_edge_cases():
    labels, groups = grouped_labels(20)
    train_idx, val_idx = frame_grouped_split(labels, groups, 0.0)
    assert len(train_idx) == len(labels) and len(val_idx) == 0
    with pytest.raises(ValueError, match="too few"):
        frame_grouped_split(labels[:3], np.array([1, 1, 2]), 0.2)
    with pytest.raises(ValueError, match="val_fraction"):
        frame_grouped_split(labels, groups, 0.7)
    with pytest.raises(ValueError, match="groups"):
        frame_grouped_split(labels, groups[:-1], 0.2)


def test_shifted_factors_match_the_target_distribution():
    rng = np.random.default_rng(0)
    sizes = rng.lognormal(np.log(110), 0.6, 2000)
    target = rng.lognormal(np.log(55), 0.6, 800)  # test boxes about half the size
    factors = shifted_downscale_factors(sizes, target)
    assert factors.dtype == np.float32 and ((factors > 0) & (factors <= 1)).all()
    shifted = sizes * factors
    assert abs(np.median(shifted) - np.median(target)) / np.median(target) < 0.05
    assert abs(np.quantile(shifted, 0.9) - np.quantile(target, 0.9)) / np.quantile(target, 0.9) < 0.08
    # the order of sizes is kept: a bigger box never ends up smaller than a smaller one
    order = np.argsort(sizes)
    assert (np.diff(shifted[order]) >= -1e-6).all()


def test_shifted_factors_never_enlarge_and_respect_the_crop_size():
    factors = shifted_downscale_factors([10, 20, 400], [50, 60, 70])
    np.testing.assert_allclose(factors[:2], 1.0)
    # a 400 px box is only 112 px in a 112 px cache: shrinking it to 70 px is a factor 70/112
    assert shifted_downscale_factors([400], [70], crop_size=112)[0] == pytest.approx(70 / 112)
    assert len(shifted_downscale_factors([], [5])) == 0
    with pytest.raises(ValueError):
        shifted_downscale_factors([10], [])


def sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_downscale_loses_detail_but_keeps_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert downscale(image, 1.0) is image
    small = downscale(image, 0.25)
    assert small.shape == image.shape and sharpness(small) < 0.2 * sharpness(image)
    plain = build_eval_transform(32)(image)
    shifted = build_eval_transform(32, downscale_factor=0.25)(image)
    assert plain.shape == shifted.shape == (3, 32, 32) and not torch.equal(plain, shifted)
    with pytest.raises(ValueError):
        build_eval_transform(32, downscale_factor=1.5)


def test_eval_transform_pads_non_square_crops():
    tall = np.full((40, 10, 3), 255, np.uint8)
    x = build_eval_transform(20)(tall)
    white = (1 - 0.485) / 0.229
    assert x[0, 10, 9].item() == pytest.approx(white, abs=1e-4)  # object column
    assert x[0, 10, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-4)  # padding, not stretched object


def test_train_transform_outputs_and_randomness():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    transform = build_train_transform(32, downscale=(0.2, 0.5), downscale_p=1.0)
    a, b = transform(image), transform(image)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and not torch.equal(a, b)
    assert -3 < a.mean().item() < 3
    plain = build_train_transform(32, rrc_scale=(1.0, 1.0), hflip=False, color_jitter=0, pca_lighting=0)
    expected = build_eval_transform(32)(cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR))
    assert torch.allclose(plain(image), expected, atol=0.05)
    with pytest.raises(ValueError, match="downscale"):
        build_train_transform(32, downscale=(0.5, 1.5))


def test_train_transform_follows_torch_manual_seed():
    image = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        transform = build_train_transform(32, downscale=(0.2, 0.5))
        runs.append(torch.stack([transform(image) for _ in range(3)]))
    assert torch.equal(runs[0], runs[1])


def test_lighting_shifts_each_channel_before_normalisation():
    from src.data.transforms import IMAGENET_STD, to_normalized_tensor

    image = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    lighting = np.array([0.1, -0.05, 0.02], np.float32)
    diff = to_normalized_tensor(image, lighting) - to_normalized_tensor(image)
    np.testing.assert_allclose(diff.numpy(), np.broadcast_to((lighting / IMAGENET_STD)[:, None, None], (3, 8, 8)),
                               atol=1e-5)
