"""The generated FathomNet-like benchmark: determinism, COCO validity, the test shift, preview, CLI."""
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pandas as pd
import pytest

from src.data.synthetic import (PRESETS, assign_frames, generate_benchmark, main, split_style, write_preview)
from src.data.synthetic_shapes import concept_genes, draw_sprite, sample_instance
from src.taxonomy import distance_matrix, load_taxonomy

TAX = load_taxonomy()
D = distance_matrix(TAX)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_benchmark(tmp_path_factory.mktemp("a") / "bench", "tiny", seed=0, workers=1, progress=False)


@pytest.fixture(scope="module")
def tiny_no_shift(tmp_path_factory) -> Path:
    """Generated through the CLI, with shift 0 and a preview."""
    root = tmp_path_factory.mktemp("noshift") / "bench"
    assert main(["--out", str(root), "--preset", "tiny", "--seed", "3", "--shift", "0",
                 "--preview", str(root.parent / "preview.png"), "--no-progress"]) == 0
    return root


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / f"dataset_{split}.json").read_text())


def _frame(root: Path, image: dict) -> np.ndarray:
    return cv2.imread(unquote(urlparse(image["coco_url"]).path), cv2.IMREAD_UNCHANGED)


def _box_side(root: Path, split: str) -> float:
    return float(np.mean([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in _coco(root, split)["annotations"]]))


def test_same_seed_same_bytes_and_pixels(tiny, tmp_path):
    again = generate_benchmark(tmp_path / "bench", "tiny", seed=0, workers=2, progress=False)
    for name in ("dataset_train.json", "dataset_test.json"):
        a = (tiny / name).read_text().replace(tiny.resolve().as_uri(), "ROOT")
        b = (again / name).read_text().replace(again.resolve().as_uri(), "ROOT")
        assert a == b
    assert (tiny / "solution.csv").read_bytes() == (again / "solution.csv").read_bytes()
    for split in ("train", "test"):
        images_a, images_b = _coco(tiny, split)["images"], _coco(again, split)["images"]
        for ia, ib in zip(images_a, images_b):
            assert np.array_equal(_frame(tiny, ia), _frame(again, ib))


def test_different_seeds_differ(tiny, tmp_path):
    other = generate_benchmark(tmp_path / "bench", "tiny", seed=1, workers=1, progress=False)
    a, b = _coco(tiny, "train"), _coco(other, "train")
    assert [x["bbox"] for x in a["annotations"]] != [x["bbox"] for x in b["annotations"]]
    assert (tiny / "solution.csv").read_bytes() != (other / "solution.csv").read_bytes()
    assert not np.array_equal(_frame(tiny, a["images"][0]), _frame(other, b["images"][0]))


def test_coco_structure_like_the_real_files(tiny, shared_data):
    real = json.loads((shared_data / "dataset_test.json").read_text())
    ours = _coco(tiny, "test")
    assert set(ours) == set(real)
    for key in ("images", "annotations", "categories", "licenses"):
        assert set(ours[key][0]) == set(real[key][0]), key
    assert set(ours["info"]) == set(real["info"])
    assert ours["categories"] == real["categories"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_coco_validity(tiny, split):
    coco = _coco(tiny, split)
    per_class = getattr(PRESETS["tiny"], f"{split}_per_class")
    images = {im["id"]: im for im in coco["images"]}
    assert sorted(images) == list(range(1, len(images) + 1))
    anns = coco["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    assert len(anns) == 79 * per_class
    assert [c["id"] for c in coco["categories"]] == list(range(1, 80))
    assert [c["name"] for c in coco["categories"]] == list(TAX.names)
    objects_per_frame = pd.Series([a["image_id"] for a in anns]).value_counts()
    assert objects_per_frame.max() <= 6 and len(objects_per_frame) == len(images)  # no empty frame
    for a in anns:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert all(isinstance(v, float) for v in a["bbox"])
        assert x >= 0 and y >= 0 and w >= 3 and h >= 3 and x + w <= im["width"] and y + h <= im["height"]
        assert a["area"] == pytest.approx(w * h) and a["iscrowd"] == 0 and a["segmentation"] == []
    if split == "train":
        counts = pd.Series([a["category_id"] for a in anns]).value_counts()
        assert sorted(counts.index) == list(range(1, 80)) and (counts == per_class).all()
    else:
        assert all(a["category_id"] is None for a in anns)
    for im in list(images.values())[:5]:
        assert im["coco_url"].startswith("file://") and im["coco_url"].endswith(im["file_name"])
        frame = _frame(tiny, im)
        assert frame.shape == (im["height"], im["width"], 3) and frame.dtype == np.uint8


def test_solution_covers_test_annotations(tiny):
    solution = pd.read_csv(tiny / "solution.csv")
    assert list(solution.columns) == ["annotation_id", "concept_name"]
    ids = [a["id"] for a in _coco(tiny, "test")["annotations"]]
    assert sorted(solution["annotation_id"]) == sorted(ids)
    assert (TAX.indices(solution["concept_name"]) >= 0).all()
    assert (solution["concept_name"].value_counts() == PRESETS["tiny"].test_per_class).all()
    assert json.loads((tiny / "generator.json").read_text())["classes"] == list(TAX.names)


def test_shift_makes_test_objects_smaller(tiny, tiny_no_shift):
    # Default shift 1: test objects about half the train size; shift 0: about the same size.
    assert _box_side(tiny, "test") / _box_side(tiny, "train") == pytest.approx(0.5, abs=0.09)
    assert _box_side(tiny_no_shift, "test") / _box_side(tiny_no_shift, "train") == pytest.approx(1.0, abs=0.15)
    styles = [split_style("test", s) for s in (0.0, 0.5, 1.0)]
    assert [st.size_scale for st in styles] == [1.0, 0.75, 0.5]
    assert styles[0] == split_style("train", 0.7)  # no shift: test conditions equal train ones
    assert styles[2].blur[1] > styles[0].blur[1] and styles[2].turbidity[1] > styles[0].turbidity[1]


def test_preview_written(tiny, tiny_no_shift, tmp_path):
    preview = tiny_no_shift.parent / "preview.png"  # written by the CLI
    image = cv2.imread(str(preview))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
    assert preview.stat().st_size < 400_000
    # Crops were pasted: the sheet is not just white background and text.
    assert (image.std(axis=2) > 10).mean() > 0.2
    small = cv2.imread(str(write_preview(tiny, tmp_path / "p.png", per_row=2)))
    assert small.shape[0] == image.shape[0] and small.shape[1] < image.shape[1]


def test_refuses_foreign_folder_and_bad_arguments(tmp_path):
    (tmp_path / "dataset_train.json").write_text("{}")
    with pytest.raises(FileExistsError):
        generate_benchmark(tmp_path, "tiny", progress=False)
    with pytest.raises(ValueError, match="preset"):
        generate_benchmark(tmp_path / "x", "huge", progress=False)
    with pytest.raises(ValueError, match="shift"):
        generate_benchmark(tmp_path / "x", "tiny", shift=1.5, progress=False)
    assert not (tmp_path / "x").exists()


def test_assign_frames_exact_counts_and_related_companions():
    rng = np.random.default_rng(0)
    counts = np.full(79, 20)
    frames = assign_frames(counts, D, rng, mean_objects=2.6)
    assert np.array_equal(np.bincount(np.concatenate(frames), minlength=79), counts)
    assert all(1 <= len(f) <= 6 for f in frames)
    pairs = [(f[0], o) for f in frames for o in f[1:]]
    mean_companion = np.mean([D[a, b] for a, b in pairs])
    assert mean_companion < 0.6 * D.mean()  # companions are far more often related than at random


def test_genes_follow_the_taxonomy():
    genes = concept_genes(TAX)
    assert len({(g.plan, g.shape, g.body_hsv, g.texture, g.count_delta) for g in genes}) == 79
    shape = np.array([g.shape for g in genes])
    hue = np.array([g.body_hsv[0] for g in genes])
    family = np.array([lin[4] or f"?{i}" for i, lin in enumerate(TAX.lineages)])
    phylum = np.array([lin[1] for lin in TAX.lineages])
    close = (family[:, None] == family[None]) & ~np.eye(79, dtype=bool)  # same family, both named
    far = phylum[:, None] != phylum[None]
    shape_dist = np.linalg.norm(shape[:, None] - shape[None], axis=-1)
    hue_dist = np.abs((hue[:, None] - hue[None] + 90) % 180 - 90)
    assert shape_dist[close].mean() < 0.5 * shape_dist[far].mean()
    assert hue_dist[close].mean() < 0.5 * hue_dist[far].mean()
    plans = [g.plan for g in genes]
    assert plans[TAX.index("Sebastes")] == plans[TAX.index("Merluccius productus")] == "fish"
    assert plans[TAX.index("Asteroidea")] == "star"


def test_coarse_concepts_may_look_like_their_finer_relatives():
    genes = concept_genes(TAX)
    relatives = {TAX.names[i]: {TAX.names[j] for j in g.relatives} for i, g in enumerate(genes)}
    assert {"Hexactinellida", "Mycale", "Farrea"} <= relatives["Porifera"]
    assert relatives["Sebastes"] == {"Sebastes diploproa"} and relatives["Sebastes diploproa"] == set()
    assert relatives["Caridea"] == set()  # rank outside the seven: its members are unknown


def test_sprites_of_every_plan_are_drawn():
    rng = np.random.default_rng(0)
    for g in concept_genes(TAX):
        bgr, alpha = draw_sprite(sample_instance(g, rng), 40.0, rng.uniform(0, 360), rng)
        ys, xs = np.nonzero(alpha > 0.2)
        assert bgr.shape[:2] == alpha.shape and len(xs) > 30, g.plan
        extent = max(np.ptp(xs), np.ptp(ys)) + 1
        assert 12 <= extent <= alpha.shape[0], (g.plan, extent)
