"""src.stages.plan: FLOPs counted on the meta device, the trainings and images of a pipeline, its disk, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from src.models import build_model
from src.stages import plan as plan_mod
from src.stages.members import build_member_config
from src.stages.pipeline_config import PipelineConfig
from src.taxonomy import load_taxonomy

REPO = Path(__file__).resolve().parents[1]


def test_forward_flops_of_a_linear_and_a_conv_layer_on_the_meta_device():
    with torch.device("meta"):
        linear, x = nn.Linear(300, 70), torch.zeros(1, 300)
        conv, image = nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.zeros(1, 3, 16, 16)
    assert plan_mod.forward_flops(linear, x) == 2 * 300 * 70
    assert plan_mod.forward_flops(conv, image) == 2 * (3 * 3 * 3) * 8 * 16 * 16


def _pipeline(tmp_path: Path, n_train: int = 50, n_test: int = 7, **keys) -> PipelineConfig:
    root = tmp_path / "data"
    root.mkdir()
    for split, n in (("train", n_train), ("test", n_test)):
        anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9]} for i in range(n)]
        (root / f"dataset_{split}.json").write_text(json.dumps({"images": [], "annotations": anns, "categories": []}))
    return PipelineConfig(**{
        "name": "p", "train_config": str(REPO / "cfg" / "demo_tiny.yaml"), "data_root": str(root),
        "train_overrides": {"train": {"epochs": 5}, "data": {"val_fraction": 0.2}},
        "seeds": [0, 1, 2], "rounds": 2, "warm_start": True, "warm_start_overrides": {"train": {"epochs": 3}},
        "pseudo": {"min_votes": 2}, "output_root": str(tmp_path / "out"), **keys})


def test_trainings_images_flops_and_disk_of_a_small_pipeline(tmp_path):
    cfg = _pipeline(tmp_path)
    p = plan_mod.make_plan(cfg)
    assert [(r.round, r.members, r.epochs, r.images) for r in p.rounds] == [(0, 3, 5, 40), (1, 3, 3, 47), (2, 3, 3, 47)]
    assert p.trainings == 9 and (p.n_train, p.n_val, p.n_test) == (50, 10, 7)
    assert p.images_seen == 3 * 5 * 40 + 2 * 3 * 3 * 47
    # the meta-device count equals one on the real (CPU) model of a member
    config = build_member_config(cfg, 0, 0)
    model = build_model(config, 79).eval()
    size = config.data.image_size
    assert p.forward_flops == plan_mod.forward_flops(model, torch.zeros(1, len(config.data.views), 3, size, size))
    assert p.train_flops == 3 * p.forward_flops * p.images_seen
    assert p.gpu_seconds == pytest.approx(p.train_flops / (989e12 * 0.4))
    # disk, by hand: float32 weights + buffers; AdamW's 2 moments; probs of 7 test + 10 val ROIs; uint8 crops
    numel = sum(t.numel() for t in model.state_dict().values())
    heads, classes, views, side = config.model.num_heads, len(load_taxonomy().names), len(config.data.views), \
        config.data.cache_size or config.data.image_size
    assert config.optim.name == "adamw" and config.train.tta_views == ["identity"]
    member = 4 * numel + 4 * heads * (7 + 10) * classes
    cache = (50 + 7) * views * side * side * 3
    params = sum(t.numel() for t in model.parameters())  # AdamW's moments: of the parameters, not the buffers
    checkpoint = 4 * numel + 2 * 4 * params
    assert p.numel == numel and p.trainable == params < numel and p.disk["checkpoint"] == checkpoint
    assert p.disk["kept"] == 9 * member + cache and p.disk["peak"] == p.disk["kept"] + 2 * checkpoint
    kept = plan_mod.make_plan(cfg.model_copy(update={"keep_checkpoints": True}))
    assert kept.disk["kept"] == 9 * (member + checkpoint) + cache
    block = plan_mod.format_plan(p)
    assert "will train 3 members x 3 trainings (round 0 + 2 self-training rounds) = 9 trainings" in block
    assert "estimate from FLOPs, not measured" in block and "removed after each member" in block


def test_a_missing_train_set_needs_images_and_the_cli_answers(tmp_path, capsys):
    cfg = _pipeline(tmp_path, rounds=0)
    (tmp_path / "data" / "dataset_train.json").unlink()
    (tmp_path / "data" / "dataset_test.json").unlink()
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert plan_mod.main([str(path)]) == 2 and "--images N" in capsys.readouterr().err
    assert plan_mod.main([str(path), "--images", "1000", "seeds=[0,1]"]) == 0
    out = capsys.readouterr().out
    assert "[plan p] will train 2 members x 1 trainings" in out and "800 (1,000 train ROIs less 200" in out
    with pytest.raises(SystemExit) as done:
        plan_mod.main(["--help"])
    assert done.value.code == 0 and "--images" in capsys.readouterr().out


def test_the_gpu_context_pipeline_is_planned_on_the_meta_device():
    """Four DINOv2 ViT-L/14 at 224 px with half their blocks frozen: counted without weights or memory."""
    from src.stages.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(REPO / "cfg" / "pipeline_gpu_context.yaml")
    p = plan_mod.make_plan(cfg, n_train=23699, n_test=788)
    assert p.trainings == 4 * 4 and p.rounds[0].images == 21329 and p.rounds[1].images == 21329 + 788
    # one ViT-L/14 forward at 224 px: 24 blocks x 257 tokens x 12.6 M weights = 78 G multiply-adds, 155 GFLOP,
    # plus attention; four views, plus the 100 heads (0.2 GFLOP)
    assert 4 * 155e9 < p.forward_flops < 4 * 170e9
    assert 1.3e9 < p.numel < 1.4e9 and 0.65e9 < p.trainable < 0.8e9  # 12 of 24 blocks frozen in each of 4 ViTs
    assert p.disk["checkpoint"] == 4 * p.numel + 2 * 4 * p.trainable
    assert "estimate from FLOPs, not measured" in plan_mod.format_plan(p)
