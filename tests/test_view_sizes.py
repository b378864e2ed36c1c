"""Per-view input sizes (data.view_sizes): config errors, the crop cache's per-view layout and key, datasets,
batched augmentation, the model's grouped forward, the FLOPs count, and a tiny training whose package predicts
its saved test probabilities; without the key everything keeps the one-size layout."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from src.config import Config, ConfigError, load_config
from src.data.cache import load_or_build_crop_cache
from src.data.coco import read_rgb
from src.data.crops import clip_box, extract_views
from src.data.dataset import CropCacheDataset
from src.data.gpu_augment import build_batch_augment
from src.data.training import load_split
from src.data.transforms import (
    STREAM_SEED_STEP,
    TrainTransform,
    ViewTransforms,
    build_train_transform,
    build_tta_transform,
)
from src.decoding import load_predictions
from src.inference import load_member, predict_crop_views, predict_ensemble
from src.manifest import read_package
from src.models import build_model
from src.runtime import reseed_transforms
from src.stages import plan as plan_mod
from src.stages.package import package
from src.stages.pipeline import run_pipeline
from src.stages.pipeline_config import PipelineConfig
from src.taxonomy import load_taxonomy
from tests.test_cache import make_split

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "cfg" / "demo_tiny.yaml"
VIEWS = ["roi", "ctx3", "frame"]
SIZES = {"ctx3": 24, "frame": 32}  # with demo_tiny's image_size 16


def tiny_cfg(*overrides) -> Config:
    return load_config(Config, TINY, list(overrides))


def test_config_errors_are_one_line_and_name_the_valid_views():
    with pytest.raises(ConfigError, match=r"view\(s\) \['frame'\] not in data.views; valid: roi, ctx3") as err:
        tiny_cfg("data.views=[roi,ctx3]", "data.view_sizes={frame: 32}")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"\['ctx9x'\] not in data.views; valid: roi"):
        tiny_cfg("data.view_sizes={ctx9x: 32}")
    with pytest.raises(ConfigError, match="at least 8 pixels"):
        tiny_cfg("data.views=[roi,frame]", "data.view_sizes={frame: 4}")
    with pytest.raises(ConfigError, match="unknown view 'ctx'.*'roi', 'ctx<k>'.*'frame'"):
        tiny_cfg("data.views=[roi,ctx]")


def test_input_and_crop_sizes_per_view():
    cfg = tiny_cfg(f"data.views={VIEWS}", f"data.view_sizes={SIZES}")
    assert cfg.data.input_sizes() == (16, 24, 32) and cfg.data.crop_sizes() == (16, 24, 32)
    scaled = tiny_cfg(f"data.views={VIEWS}", f"data.view_sizes={SIZES}", "data.cache_size=20")
    assert scaled.data.crop_sizes() == (20, 30, 40)  # cache_size / image_size applies to every view
    assert tiny_cfg(f"data.views={VIEWS}").data.crop_sizes() == (16, 16, 16)


def test_cache_with_view_sizes_has_per_view_arrays_and_its_own_key(tmp_path):
    coco_json, images_dir = make_split(tmp_path)
    one = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", 24, views=VIEWS, progress=False)
    same = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", (24, 24, 24), views=VIEWS,
                                    progress=False)
    assert same.path == one.path and isinstance(one.crops, np.memmap) and one.crops.shape == (6, 3, 24, 24, 3)
    assert one.path.name.startswith("coco_s24_roi-ctx3-frame_") and (one.path / "crops.npy").is_file()
    assert "sizes" not in json.loads((one.path / "meta.json").read_text())  # the one-size meta, as before
    # the one-size layout holds what extract_views (every view at one size) gives, row by row
    rgb = read_rgb(images_dir / "f1.png")
    np.testing.assert_array_equal(one.crops[0], extract_views(rgb, clip_box([40, 30, 20, 10], 120, 90), VIEWS, 24))

    multi = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", (16, 24, 32), views=VIEWS,
                                     progress=False)
    assert multi.path != one.path and multi.path.name.startswith("coco_s16-24-32_roi-ctx3-frame_")
    assert one.path.is_dir()  # another size is another cache, not a superseded build
    assert isinstance(multi.crops, tuple) and multi.sizes == (16, 24, 32)
    assert [c.shape for c in multi.crops] == [(6, 16, 16, 3), (6, 24, 24, 3), (6, 32, 32, 3)]
    assert json.loads((multi.path / "meta.json").read_text())["sizes"] == [16, 24, 32]
    assert not (multi.path / "crops.npy").exists()
    np.testing.assert_array_equal(multi.crops[1], one.crops[:, 1])  # ctx3 at 24 px: the same pixels
    for v, size in enumerate((16, 24, 32)):
        expected = extract_views(rgb, clip_box([40, 30, 20, 10], 120, 90), VIEWS[v:v + 1], size)[0]
        np.testing.assert_array_equal(multi.crops[v][0], expected)
    again = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", (16, 24, 32), views=VIEWS,
                                     progress=False)
    assert again.path == multi.path and (again.crops[2] == multi.crops[2]).all()
    with pytest.raises(ValueError, match="2 crop sizes"):
        load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", (16, 24), views=VIEWS, progress=False)


def test_datasets_give_per_view_tensors_and_pickle(tmp_path):
    import pickle

    coco_json, images_dir = make_split(tmp_path)
    cache = load_or_build_crop_cache(coco_json, images_dir, tmp_path / "cache", (16, 24, 32), views=VIEWS,
                                     progress=False)
    train_tf = build_train_transform((16, 24, 32), rrc_scale=(0.5, 1.0))
    assert isinstance(train_tf, ViewTransforms) and len({id(t) for t in train_tf.transforms}) == 3
    dataset = CropCacheDataset(cache.crops, cache.labels, train_tf)
    x, label = dataset[0]
    assert isinstance(x, tuple) and [tuple(v.shape) for v in x] == [(3, 16, 16), (3, 24, 24), (3, 32, 32)]
    torch.manual_seed(5)  # PCA lighting draws from torch's stream
    reseed_transforms(dataset, 5)
    first = dataset[0][0]
    torch.manual_seed(5)
    reseed_transforms(dataset, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, dataset[0][0]))  # reseeding reproduces every view
    clone = pickle.loads(pickle.dumps(dataset))  # memmaps travel by file name to the workers
    assert isinstance(clone.crops[0], np.memmap) and (clone.crops[2] == cache.crops[2]).all()
    batch, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert [tuple(v.shape) for v in batch] == [(4, 3, 16, 16), (4, 3, 24, 24), (4, 3, 32, 32)]
    # equal sizes collapse to the one-size transform and the stacked (V, 3, S, S) item
    assert not isinstance(build_tta_transform((16, 16, 16), "hflip"), ViewTransforms)
    with pytest.raises(ValueError, match="2 view transforms for 3 views"):
        CropCacheDataset(cache.crops, cache.labels, build_tta_transform((16, 24), "identity"))


def test_transforms_of_different_sizes_draw_apart():
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)

    def draw(stream: int, seed: int) -> torch.Tensor:
        transform = TrainTransform(16, rrc_scale=(0.2, 1.0), stream=stream)
        transform(image)  # the first call takes its process's seed; what follows is what training seeds
        torch.manual_seed(0)
        transform.set_random_seed(seed)
        return transform(image)

    assert torch.equal(draw(1, 5), draw(0, 5 + STREAM_SEED_STEP))  # a stream is an offset of the seed
    assert not torch.equal(draw(1, 5), draw(0, 5))  # seeded alike, views of two sizes draw different crops
    views = build_train_transform((16, 24, 16))
    assert views[0] is views[2] and [t.stream for t in views.transforms] == [0, 1, 0]


def test_batched_augmentation_per_view_sizes():
    cfg = tiny_cfg(f"data.views={VIEWS}", f"data.view_sizes={SIZES}")
    augment = build_batch_augment(cfg.augment, cfg.data.input_sizes())
    views = [torch.randint(0, 256, (5, s, s, 3), dtype=torch.uint8) for s in (16, 24, 32)]
    out = augment(views, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in out] == [(5, 3, 16, 16), (5, 3, 24, 24), (5, 3, 32, 32)]
    again = augment(views, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    with pytest.raises(ValueError, match="list of 3 views"):
        augment(torch.zeros(5, 3, 16, 16, 3, dtype=torch.uint8))
    assert build_batch_augment(cfg.augment, (16, 16, 16)).size == 16  # one size: the tensor path


@pytest.mark.parametrize("shared", [True, False])
def test_model_takes_per_view_sizes(shared):
    # roi and frame share 16 px: a shared backbone runs once on both, stacked along the batch
    cfg = tiny_cfg(f"data.views={VIEWS}", "data.view_sizes={ctx3: 24}", f"model.shared_backbone={shared}")
    torch.manual_seed(0)
    model = build_model(cfg, 10).eval()
    views = [torch.randn(2, 3, s, s) for s in (16, 24, 16)]
    with torch.no_grad():
        out = model(views)
        feats = model.encode(views)
        alone = [model.backbones[0 if shared else k](v) for k, v in enumerate(views)]
    assert out["logits"].shape == (2, 2, 10)
    for k in range(3):  # grouping views by size gives each view its own backbone pass's features
        torch.testing.assert_close(feats[:, k], alone[k])
    with pytest.raises(ValueError, match="expects 3 views"):
        model(views[:2])


def test_a_fixed_size_vit_is_a_clear_error():
    cfg = tiny_cfg("model.backbone=vit_tiny_patch16_224", "data.image_size=224", "data.views=[roi,frame]",
                   "data.view_sizes={frame: 112}")
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224 takes 224x224 px inputs only, but views of 112 px"):
        build_model(cfg, 10)


def test_per_view_vits_are_built_for_their_own_sizes():
    cfg = tiny_cfg("model.backbone=vit_tiny_patch16_224", "model.shared_backbone=false", "data.image_size=32",
                   "data.views=[roi,frame]", "data.view_sizes={frame: 16}", "model.backbone_kwargs={depth: 1}")
    model = build_model(cfg, 10).eval()
    assert [b.patch_embed.img_size for b in model.backbones] == [(32, 32), (16, 16)]
    with torch.no_grad():
        out = model([torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 16, 16)])
    assert out["logits"].shape == (cfg.model.num_heads, 2, 10)


def test_plan_counts_flops_per_view_size():
    cfg = tiny_cfg(f"data.views={VIEWS}", f"data.view_sizes={SIZES}")
    flops, _, _ = plan_mod.model_cost(cfg)
    one_size, _, _ = plan_mod.model_cost(tiny_cfg(f"data.views={VIEWS}"))
    model = build_model(cfg, len(load_taxonomy().names)).eval()
    assert flops == plan_mod.forward_flops(model, [torch.zeros(1, 3, s, s) for s in (16, 24, 32)])
    assert flops > one_size * 1.5  # (16^2 + 24^2 + 32^2) / (3 x 16^2) = 2.4 for the backbone's share
    disk = plan_mod.disk_bytes(10, "adamw", 1, 79, 0, 0, 1, 100, (16, 24, 32), 1, False)
    assert disk["cache"] == 100 * (16 ** 2 + 24 ** 2 + 32 ** 2) * 3


def test_unset_view_sizes_keep_the_one_size_cache(tiny_root, tmp_path):
    taxonomy = load_taxonomy()
    plain = tiny_cfg(f"data.root={tiny_root}", f"data.cache_dir={tmp_path}", f"data.views={VIEWS}")
    cache = load_split(plain, taxonomy, "test", progress=False)
    assert isinstance(cache.crops, np.memmap) and cache.crops.shape[1:] == (3, 16, 16, 3)
    # sizes equal to image_size are the one-size layout: the same cache folder
    named = tiny_cfg(f"data.root={tiny_root}", f"data.cache_dir={tmp_path}", f"data.views={VIEWS}",
                     "data.view_sizes={frame: 16}")
    assert load_split(named, taxonomy, "test", progress=False).path == cache.path
    sized = tiny_cfg(f"data.root={tiny_root}", f"data.cache_dir={tmp_path}", f"data.views={VIEWS}",
                     f"data.view_sizes={SIZES}")
    other = load_split(sized, taxonomy, "test", progress=False)
    assert other.path != cache.path and cache.path.is_dir()
    np.testing.assert_array_equal(other.crops[0], cache.crops[:, 0])  # the ROI view is the same 16 px


def test_tiny_training_with_view_sizes_and_its_package(tiny_root, tmp_path):
    """One member on [roi, ctx3, frame] at 16 / 24 / 32 px trains 1 epoch through the pipeline, writes its
    predictions, and its package predicts its saved test probabilities bit for bit."""
    overrides = {"data": {"views": VIEWS, "view_sizes": SIZES},
                 "train": {"epochs": 1, "progress": False, "tta_views": ["identity", "hflip"]}}
    cfg = PipelineConfig(name="sizes", train_config=str(TINY), train_overrides=overrides, data_root=str(tiny_root),
                         seeds=[0], rounds=0, decoding={"decoders": ["argmax"]},
                         output_root=str(tmp_path / "out"), submissions_dir=str(tmp_path / "submissions"))
    run_pipeline(cfg)
    member = cfg.layout.member_dir(0, 0)
    assert (member / "predictions.csv").is_file() and (member / "done.json").is_file()
    saved = load_predictions([member], "test", load_taxonomy())
    assert saved.members[0].shape == (2, 80, 79)
    out = package(cfg, tmp_path / "package", decoder="argmax")
    root, manifest = read_package(out, verify=True)
    preds = predict_ensemble([root / m["dir"] for m in manifest["members"]], tiny_root / "dataset_test.json",
                             tmp_path / "cache", images_dir=tiny_root / "test" / "images", device="cpu",
                             progress=False)
    assert (preds.annotation_id == saved.annotation_id).all()
    assert (preds.members[0] == saved.members[0]).all()  # bit-identical probabilities
    assert preds.views == saved.views == ("identity", "hflip")
    assert (preds.member_views[0] == saved.member_views[0]).all()  # every test-time view
    assert not np.array_equal(saved.member_views[0][0], saved.member_views[0][1])
    cache_dirs = [p.name for p in (tmp_path / "cache").iterdir()]
    assert any(name.startswith("dataset_test_s16-24-32_roi-ctx3-frame_") for name in cache_dirs)
    # one-size crops are refused by a member trained on per-view sizes
    loaded = load_member(root / manifest["members"][0]["dir"], device="cpu")
    with pytest.raises(ValueError, match=r"a tuple of V arrays \(N, S_v, S_v, 3\)"):
        predict_crop_views(loaded, np.zeros((2, 3, 16, 16, 3), np.uint8))


def test_batched_augmentation_trains_on_view_sizes_with_per_view_backbones(tiny_root, tmp_path):
    from src.train import train

    cfg = tiny_cfg(f"data.root={tiny_root}", f"output.dir={tmp_path}", f"data.views={VIEWS}",
                   f"data.view_sizes={SIZES}", "augment.batched=true", "model.shared_backbone=false",
                   "model.fusion=attention", "train.epochs=1", "data.shifted_val=true")
    run = train(cfg)
    test = np.load(run / "test_probs.npz")
    assert test["probs"].shape == (2, 80, 79) and np.isfinite(test["probs"]).all()
    metrics = np.genfromtxt(run / "metrics.csv", delimiter=",", names=True)
    assert np.isfinite(metrics["val_distance"]) and np.isfinite(metrics["shifted_distance"])
