"""Decoded crop cache: layout of the views, automatic rebuilds, and the datasets that read it."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.cache import load_or_build_crop_cache, open_crop_cache
from src.data.dataset import CropCacheDataset, PngRoiDataset, with_transform
from src.data.transforms import (
    build_eval_transform,
    build_torchvision_train_transform,
    build_train_transform,
    build_tta_transform,
)
from src.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy()
COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250)]


def make_split(root, labelled=True, n_frames=3, mode="RGB"):
    """Frames of grey background with one coloured 20 x 10 object each at (40, 30); COCO beside them."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(1, n_frames + 1):
        frame = np.full((90, 120, 3), 60, np.uint8)
        frame[30:40, 40:60] = COLOURS[(i - 1) % 3]
        image = Image.fromarray(frame)
        if mode == "P":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)  # exact colours
        image.convert(mode).save(images_dir / f"f{i}.png")
        images.append({"id": i, "file_name": f"f{i}.png", "width": 120, "height": 90})
        annotations.append({"id": 10 * i, "image_id": i, "bbox": [40, 30, 20, 10],
                            "category_id": i if labelled else None})
        annotations.append({"id": 10 * i + 1, "image_id": i, "bbox": [110, 80, 30, 30],
                            "category_id": 79 if labelled else None})
    categories = [{"id": k, "name": name} for k, name in zip(TAXONOMY.category_ids, TAXONOMY.names)]
    coco_json = root / "coco.json"
    coco_json.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return coco_json, images_dir


def test_views_layout_and_index(tmp_path):
    coco_json, images_dir = make_split(tmp_path)
    cache = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", 24,
                                     views=("roi", "ctx3", "frame"), progress=False)
    assert cache.crops.shape == (6, 3, 24, 24, 3) and cache.crops.dtype == np.uint8
    assert isinstance(cache.crops, np.memmap) and cache.views == ("roi", "ctx3", "frame")
    assert cache.classes == TAXONOMY.names
    index = cache.index
    assert list(index["annotation_id"]) == [10, 11, 20, 21, 30, 31]
    assert list(index["label"]) == [0, 78, 1, 78, 2, 78]  # category_id - 1
    assert index.loc[0, "concept_name"] == TAXONOMY.names[0]
    assert list(index.loc[0, ["box_w", "box_h", "frame_w", "frame_h"]]) == [20, 10, 120, 90]
    assert list(index.loc[1, ["box_w", "box_h"]]) == [10, 10]  # clipped at the frame border
    assert (index["problem"] == "").all()

    roi, ctx3, frame = cache.crops[0]
    assert (roi[6:18] == COLOURS[0]).all()  # 2:1 box: full width, padded above and below
    assert (roi[:5] == 0).all() and (roi[19:] == 0).all()
    assert (ctx3[11:13, 8:16] == COLOURS[0]).all()  # the object is a third of the window, centred
    assert (ctx3[:7] == 60).all()
    assert (frame[:3] == 0).all() and (frame[4:20, 1:23] != 0).any()  # 4:3 frame padded to a square
    np.testing.assert_array_equal(cache.crops[0, 2], cache.crops[1, 2])  # same frame view for both boxes


def test_rebuilds_when_inputs_or_parameters_change(tmp_path):
    coco_json, images_dir = make_split(tmp_path)
    cache_dir = tmp_path / "cache"
    first = load_or_build_crop_cache(coco_json, images_dir, cache_dir, 16, progress=False)
    built_at = (first.path / "crops.npy").stat().st_mtime_ns
    again = load_or_build_crop_cache(coco_json, images_dir, cache_dir, 16, progress=False)
    assert again.path == first.path and (again.path / "crops.npy").stat().st_mtime_ns == built_at

    other_size = load_or_build_crop_cache(coco_json, images_dir, cache_dir, 20, progress=False)
    assert other_size.path != first.path and other_size.crops.shape[2] == 20 and first.path.is_dir()
    other_views = load_or_build_crop_cache(coco_json, images_dir, cache_dir, 16, views=("roi", "ctx5"),
                                           progress=False)
    assert other_views.crops.shape[1] == 2 and other_views.path != first.path

    frame = np.full((90, 120, 3), 60, np.uint8)
    frame[30:40, 40:60] = (255, 255, 0)
    Image.fromarray(frame).save(images_dir / "f1.png")
    stat = os.stat(images_dir / "f1.png")
    os.utime(images_dir / "f1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = load_or_build_crop_cache(coco_json, images_dir, cache_dir, 16, progress=False)
    assert changed.path != first.path
    assert (changed.crops[0, 0, 8] == (255, 255, 0)).all()
    assert not first.path.exists()  # the superseded build of the same inputs is removed
    assert other_size.path.exists()  # other sizes are kept

    meta = json.loads((changed.path / "meta.json").read_text())
    meta_before = dict(meta)
    coco = json.loads(coco_json.read_text())
    coco["annotations"][0]["bbox"] = [0, 0, 20, 10]
    coco_json.write_text(json.dumps(coco))
    os.utime(coco_json, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    moved = load_or_build_crop_cache(coco_json, images_dir, cache_dir, 16, progress=False)
    assert json.loads((moved.path / "meta.json").read_text())["key"] != meta_before["key"]


def test_incomplete_build_is_not_used(tmp_path):
    coco_json, images_dir = make_split(tmp_path)
    cache = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", 16, progress=False)
    (cache.path / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete crop cache"):
        open_crop_cache(cache.path)
    rebuilt = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", 16, progress=False)
    assert (rebuilt.path / "meta.json").is_file()


def test_bad_frames_and_boxes_keep_their_rows(tmp_path):
    coco_json, images_dir = make_split(tmp_path, labelled=False, mode="P")
    data = (images_dir / "f2.png").read_bytes()
    (images_dir / "f2.png").write_bytes(data[: len(data) // 2])  # truncated
    (images_dir / "f3.png").unlink()
    coco = json.loads(coco_json.read_text())
    coco["annotations"][1]["bbox"] = [500, 500, 5, 5]
    coco_json.write_text(json.dumps(coco))
    cache = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", 16, progress=False)
    problems = list(cache.index["problem"])
    assert problems[0] == "" and "outside" in problems[1]
    assert all(p.startswith("undecodable frame") for p in problems[2:])
    assert list(cache.good) == [True, False, False, False, False, False]
    assert (cache.labels == -1).all() and (cache.index["concept_name"] == "").all()
    assert (cache.crops[2:] == 0).all()
    assert Image.open(images_dir / "f1.png").mode == "P"
    assert (cache.crops[0, 0, 6:10] == COLOURS[0]).all()  # palette frame decoded to RGB


def test_datasets_read_cache_and_pngs(tmp_path):
    coco_json, images_dir = make_split(tmp_path)
    cache = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", 24, views=("roi", "ctx3"),
                                     progress=False)
    dataset = CropCacheDataset(cache.crops, cache.labels, build_eval_transform(24))
    x, y = dataset[0]
    assert x.shape == (2, 3, 24, 24) and x.dtype == torch.float32 and y == 0
    red = (np.array(COLOURS[0]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0, :, 12, 12].numpy(), red, atol=1e-5)

    only_ctx = CropCacheDataset(cache.crops, cache.labels, build_train_transform(20, downscale=(0.3, 0.6)),
                                view_indices=[1])
    xb, _ = only_ctx[3]
    assert xb.shape == (1, 3, 20, 20)

    shifted = CropCacheDataset(cache.crops, cache.labels, build_eval_transform(24),
                               downscale_factors=np.full(len(cache), 0.25))
    assert not torch.equal(shifted[0][0], x) and shifted[0][0].shape == x.shape

    copy = pickle.loads(pickle.dumps(dataset))  # what a spawned DataLoader worker receives
    assert isinstance(copy.crops, np.memmap) and torch.equal(copy[0][0], x)
    assert len(pickle.dumps(dataset)) < cache.crops.nbytes  # the array is reopened, not shipped

    roi_png = tmp_path / "roi.png"
    Image.fromarray(np.asarray(cache.crops[0, 0])).convert("L").save(roi_png)
    pngs = PngRoiDataset([roi_png.name], [5], build_torchvision_train_transform(16), root=tmp_path)
    xp, yp = pngs[0]
    assert xp.shape == (3, 16, 16) and yp == 5

    with pytest.raises(ValueError, match="labels"):
        CropCacheDataset(cache.crops, cache.labels[:2], build_eval_transform(24))


def test_test_time_view_transforms():
    image = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    plain = build_tta_transform(20, "identity")(image)
    assert torch.equal(plain, build_eval_transform(20)(image))
    assert torch.equal(build_tta_transform(20, "hflip")(image), plain.flip(-1))  # flipped pixels, same values
    assert torch.equal(build_tta_transform(20, "down75")(image), build_eval_transform(20, 0.75)(image))
    assert torch.equal(build_tta_transform(20, "hflip_down75")(image),
                       build_eval_transform(20, 0.75)(np.ascontiguousarray(image[:, ::-1])))
    dataset = CropCacheDataset(image[None, None], [3], build_eval_transform(20))
    flipped = with_transform(torch.utils.data.Subset(dataset, [0]), build_tta_transform(20, "hflip"))
    assert torch.equal(flipped[0][0], dataset[0][0].flip(-1)) and flipped[0][1] == 3
    assert dataset.transform.hflip is False  # the original keeps its transform


def test_dataloader_workers_draw_different_augmentations():
    crops = np.repeat(np.random.default_rng(0).integers(0, 255, (1, 1, 24, 24, 3), dtype=np.uint8), 4, axis=0)
    transform = build_train_transform(16, color_jitter=0, pca_lighting=0)  # only albumentations' RNG
    loader = torch.utils.data.DataLoader(CropCacheDataset(crops, np.zeros(4), transform), batch_size=1,
                                         num_workers=2)
    first_of_each_worker = [x for x, _ in loader][:2]  # items 0 and 1 are each worker's first draw
    assert not torch.equal(first_of_each_worker[0], first_of_each_worker[1])
