"""The real skeleton behind the generated benchmark: shipped files, their derivation, preset sampling."""
import numpy as np
import pandas as pd
import pytest

from src.synthetic.error_profile import spearman
from src.synthetic.generator import (
    PRESETS,
    TRAIN_SIZE_GAIN,
    assign_test_labels,
    class_size_model,
    cooccurrence,
    plan_frames,
    sample_frames,
)
from src.synthetic.shapes import Appearance, concept_genes
from src.synthetic.skeleton import FILES, SKELETON_DIR, derive_skeleton, load_skeleton
from src.taxonomy import load_taxonomy

SKELETON = load_skeleton()
C = 79
GENES = concept_genes(load_taxonomy(), Appearance())


def test_shipped_skeleton_has_the_real_counts():
    multisets = SKELETON.train_multisets()
    assert len(multisets) == 8980 and sum(map(len, multisets)) == 23699
    counts = np.bincount(np.concatenate(multisets), minlength=C)
    assert counts.min() == 299 and counts.max() == 300  # 300 per concept, Elpidia 299
    geometry = SKELETON.test_geometry
    assert len(geometry) == 788 and geometry["frame"].nunique() == 325
    assert list(geometry.columns) == ["frame", "width", "height", "x", "y", "w", "h"]  # no labels
    assert (SKELETON.class_sizes["n"].sum(), len(SKELETON.class_sizes)) == (788, 79)
    composition = SKELETON.test_composition
    assert composition["frames"].sum() == 325
    assert all(sum(int(k) for k in p.split("+")) == n for n, p in zip(composition["n_rois"], composition["pattern"]))


def test_derivation_reproduces_the_shipped_files(shared_data, tmp_path):
    for name in ("train_labels.csv", "dataset_test.json", "test_labels.csv"):
        if not (shared_data / name).is_file():
            pytest.skip(f"{name} not available")
    derive_skeleton(shared_data, tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (SKELETON_DIR / name).read_bytes(), name


def test_patterns_sum_to_the_roi_count():
    for n in (1, 2, 5, 23, 40):  # 40: larger than any real test frame, rescaled
        patterns, weights = SKELETON.patterns(n)
        assert all(sum(p) == n for p in patterns) and weights.sum() == pytest.approx(1.0)
    patterns, weights = SKELETON.patterns(1)
    assert patterns == [(1,)]


def test_test_labels_follow_quota_composition_and_size():
    rng = np.random.default_rng(0)
    labels = assign_test_labels(SKELETON, C, rng)
    flat = np.concatenate(labels)
    assert len(flat) == 788
    counts = np.bincount(flat, minlength=C)
    assert counts.min() >= 6 and counts.max() <= 14  # about 10 each, like the real test
    single = np.mean([len(np.unique(f)) == 1 for f in labels])
    assert 0.65 <= single <= 0.85  # real: 74 % of test frames hold one taxon
    geometry = SKELETON.test_geometry
    rel = geometry[["w", "h"]].max(axis=1).to_numpy() / geometry[["width", "height"]].max(axis=1).to_numpy()
    generated = pd.Series(rel).groupby(flat).median()
    real = SKELETON.class_sizes["rel_median"].reindex(generated.index)
    assert spearman(generated.to_numpy(), real.to_numpy()) >= 0.8


def test_sample_frames_keeps_whole_frames_and_balance():
    multisets = SKELETON.train_multisets()
    pick = sample_frames(multisets, 2400, C, np.random.default_rng(1))
    counts = np.bincount(np.concatenate([multisets[f] for f in pick]), minlength=C)
    assert 2400 <= counts.sum() <= 2400 * 1.05
    assert counts.min() >= 0.5 * 2400 / C and counts.max() <= 1.5 * 2400 / C + 2
    assert np.array_equal(sample_frames(multisets, None, C, np.random.default_rng(0)), np.arange(len(multisets)))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_plan_real_frames(preset):
    plans = plan_frames(SKELETON, PRESETS[preset], seed=0, shift=1.0, render_scale=0.25, genes=GENES)
    p = PRESETS[preset]
    n_train = sum(len(f.labels) for f in plans["train"])
    n_test = sum(len(f.labels) for f in plans["test"])
    assert n_train == 23699 if p.train_rois is None else p.train_rois <= n_train <= 1.1 * p.train_rois
    assert n_test == 788 if p.test_rois is None else p.test_rois <= n_test <= 1.2 * p.test_rois
    real = {tuple(sorted(m)) for m in SKELETON.train_multisets()}
    assert all(tuple(sorted(f.labels)) in real for f in plans["train"])
    for f in plans["test"]:
        assert f.boxes.shape == (len(f.labels), 4) and f.sizes is None
        assert (f.boxes[:, 0] + f.boxes[:, 2] <= f.width + 1).all()
    for f in plans["train"]:
        assert f.boxes is None and len(f.sizes) == len(f.labels) and (f.sizes > 0).all()


def test_train_objects_are_larger_with_shift():
    def median_rel(plans):
        return np.median(np.concatenate([f.sizes / max(f.width, f.height) for f in plans]))

    shifted = plan_frames(SKELETON, PRESETS["demo"], 0, 1.0, 0.25, GENES)["train"]
    same = plan_frames(SKELETON, PRESETS["demo"], 0, 0.0, 0.25, GENES)["train"]
    assert median_rel(shifted) / median_rel(same) == pytest.approx(1 + TRAIN_SIZE_GAIN, rel=0.05)
    mu, _ = class_size_model(SKELETON, C)
    assert median_rel(same) == pytest.approx(np.exp(np.median(mu)), rel=0.35)


def test_cooccurrence_rows():
    K = cooccurrence([np.array([0, 0, 1]), np.array([1, 2]), np.array([2])], 3, smoothing=0.0)
    assert np.allclose(K.sum(1), 1.0) and np.allclose(np.diag(K), 0.0)
    assert K[0, 1] == 1.0 and K[1, 0] == pytest.approx(0.5) and K[1, 2] == pytest.approx(0.5)
