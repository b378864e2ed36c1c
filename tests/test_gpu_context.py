"""The GPU context recipe's CPU twin (cfg/gpu_context_toy.yaml: ROI + 3x + 5x + frame views, one ViT per view with
frozen blocks and gradient checkpointing, attention fusion, rank heads, DW-CE) end to end on the 'tiny' benchmark:
a pipeline with a self-training round, its Kaggle package and the submission notebook, which cuts the four views
from the test frames and predicts what training predicted; exact resumption; frozen blocks stay as initialised."""
from pathlib import Path

import numpy as np
import pytest
import torch

from src.config import Config, load_config
from src.decoding import load_predictions
from src.inference import load_member, predict_ensemble
from src.models import build_model
from src.runtime import seed_everything
from src.stages.package import package
from src.stages.pipeline import run_pipeline
from src.stages.pipeline_config import PipelineConfig
from src.taxonomy import load_taxonomy
from src.train import train
from tests.test_notebooks import run_notebook

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "cfg" / "gpu_context_toy.yaml"
VIEWS = ("roi", "ctx3", "ctx5", "frame")


@pytest.fixture(scope="module")
def context_run(tiny_root, tmp_path_factory):
    """2 seeds of the toy recipe, 1 epoch, 1 self-training round, packaged like a Kaggle input folder."""
    base = tmp_path_factory.mktemp("gpu_context")
    cfg = PipelineConfig(
        name="context", train_config=str(TOY), train_overrides={"data": {"cache_dir": str(base / "cache")}},
        data_root=str(tiny_root), solution=str(tiny_root / "solution.csv"), seeds=[0, 1], rounds=1,
        pseudo={"min_votes": 1}, decoding={"decoders": ["argmax", "bayes"]},
        output_root=str(base / "out"), submissions_dir=str(base / "submissions"))
    run_pipeline(cfg)
    package(cfg, base / "kaggle_input" / "context-ensemble" / "package", decoder="bayes")
    return cfg, base / "kaggle_input" / "context-ensemble"


def test_members_hold_the_recipe(context_run):
    cfg, _ = context_run
    member = load_member(cfg.layout.member_dir(1, 0), device="cpu")
    assert member.views == VIEWS and len(member.model.backbones) == 4
    for vit in member.model.backbones:
        assert vit.grad_checkpointing and vit.patch_embed.img_size == (32, 32) and len(vit.blocks) == 4
        assert [all(not p.requires_grad for p in b.parameters()) for b in vit.blocks] == [True, True, False, False]
    assert set(member.model.aux) == {"phylum", "class", "order", "family", "genus"}
    assert (cfg.layout.round_dir(1) / "pseudo_labels.csv").is_file()  # round 1 trained on pseudo-labels
    with np.load(cfg.layout.member_dir(1, 0) / "test_probs.npz") as z:
        assert z["probs"].shape == (2, 80, 79) and np.isfinite(z["probs"]).all()


def test_kaggle_notebook_cuts_the_context_views_from_the_frames_and_writes_submit_s_csv(context_run, tmp_path):
    cfg, kaggle_input = context_run
    text = run_notebook("kaggle_submission.ipynb", tmp_path, PACKAGE_DIR=str(kaggle_input), DATA_DIR=cfg.data_root)
    assert "(used)" in text.split("frames:")[1].split(";")[0] and "decoder bayes" in text
    assert (tmp_path / "submission.csv").read_bytes() == cfg.layout.submission("bayes").read_bytes()
    saved = load_predictions([cfg.layout.member_dir(1, s) for s in cfg.seeds], "test", load_taxonomy())
    with np.load(tmp_path / "ensemble_probs.npz") as z:
        assert (z["annotation_id"] == saved.annotation_id).all()
        assert (z["member_means"] == saved.member_means).all()  # bit for bit: the same four views, the same model
    caches = list((tmp_path / "crop_cache").rglob("crops.npy"))
    assert len(caches) == 1 and np.load(caches[0], mmap_mode="r").shape[1:] == (4, 32, 32, 3)


def test_context_members_refuse_roi_files_alone(context_run, tmp_path):
    cfg, kaggle_input = context_run
    members = [kaggle_input / "package" / "members" / f"seed_{s}" for s in cfg.seeds]
    root = Path(cfg.data_root)
    with pytest.raises(ValueError, match=r"views \('roi', 'ctx3', 'ctx5', 'frame'\) need the frames"):
        predict_ensemble(members, root / "dataset_test.json", tmp_path / "cache", images_dir=tmp_path / "no_frames",
                         rois_dir=root / "test" / "rois", device="cpu", progress=False)


def _toy(root, out, *overrides) -> Config:
    return load_config(Config, TOY, [f"data.root={root}", f"output.dir={out}", f"data.cache_dir={out / 'cache'}",
                                     *overrides])


def test_toy_resumes_exactly_and_its_frozen_blocks_stay_as_initialised(tiny_root, tmp_path):
    full = train(_toy(tiny_root, tmp_path, "train.epochs=2", "output.run_name=full"))
    train(_toy(tiny_root, tmp_path, "train.epochs=2", "output.run_name=part", "train.max_epochs_this_run=1"))
    part = train(_toy(tiny_root, tmp_path, "train.epochs=2", "output.run_name=part", "train.resume=true"))
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (full, part))
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    with np.load(full / "test_probs.npz") as za, np.load(part / "test_probs.npz") as zb:
        assert np.array_equal(za["probs"], zb["probs"])

    cfg = _toy(tiny_root, tmp_path)
    taxonomy = load_taxonomy()
    seed_everything(cfg.seed)  # as src.train does before it builds the model: the same initial weights
    initial = build_model(cfg, len(taxonomy), {r: len(taxonomy.rank_labels(r)[1]) for r in cfg.model.aux_ranks})
    frozen = [n for n, p in initial.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in initial.named_parameters() if p.requires_grad]
    assert len(frozen) == 4 * (4 + 2 * len([n for n, _ in initial.backbones[0].blocks[0].named_parameters()]))
    start = initial.state_dict()
    assert all(torch.equal(a["model"][n], start[n]) for n in frozen)
    assert sum(not torch.equal(a["model"][n], start[n]) for n in trainable) > 0.9 * len(trainable)
    assert len(a["optimizer"]["state"]) == len(trainable)  # AdamW moments for the trainable parameters only
