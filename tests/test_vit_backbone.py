"""The model keys a large ViT needs on one GPU, on a tiny timm ViT with random weights: the input size
(data.image_size, not timm's default), model.backbone_kwargs, model.grad_checkpointing, model.frozen_blocks."""
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint

from src.config import Config, ConfigError, load_config, validate_config
from src.models import build_model, configure_backbone, create_backbone, takes_img_size
from src.train import build_optimizer

REPO = Path(__file__).resolve().parents[1]
VIT = "vit_tiny_patch16_224"
SMALL = {"depth": 4, "embed_dim": 32, "num_heads": 2}  # a 4-block ViT of 32 channels


def _cfg(image_size: int = 32, views=("roi",), **model) -> Config:
    return validate_config(Config, {
        "data": {"image_size": image_size, "views": list(views)},
        "model": {"backbone": VIT, "backbone_kwargs": SMALL, "num_heads": 2, "head_hidden": 8,
                  "channels_last": False, **model}})


def test_vits_take_the_configured_input_size_and_cnns_are_unchanged():
    assert takes_img_size("vit_large_patch14_dinov2.lvd142m") and takes_img_size(VIT)
    assert not takes_img_size("resnet18") and not takes_img_size("wrn10_1")
    model = build_model(_cfg(32), 79).eval()
    vit = model.backbones[0]
    assert vit.patch_embed.img_size == (32, 32) and vit.pos_embed.shape == (1, 2 * 2 + 1, 32)
    assert len(vit.blocks) == 4 and vit.embed_dim == 32  # backbone_kwargs reached timm
    assert model(torch.randn(2, 3, 32, 32))["logits"].shape == (2, 2, 79)
    default = create_backbone(VIT, **SMALL)  # timm's own default: 224 px, which a 32 px input does not fit
    assert default.patch_embed.img_size == (224, 224)
    with pytest.raises(AssertionError):
        default(torch.randn(1, 3, 32, 32))
    wrn = build_model(Config.model_validate({"data": {"image_size": 24}, "model": {"backbone": "wrn10_1"}}), 5)
    assert wrn(torch.randn(2, 3, 24, 24))["logits"].shape == (1, 2, 5)  # the WRN path ignores the size


def test_pretrained_weights_of_another_size_load_with_a_resampled_position_embedding(tmp_path):
    source = create_backbone(VIT, img_size=64, **SMALL)  # 4 x 4 patches
    torch.save(source.state_dict(), tmp_path / "vit64.pth")
    vit = create_backbone(VIT, pretrained=True, img_size=32, pretrained_cfg_overlay={"file": str(tmp_path / "vit64.pth")},
                          **SMALL)  # timm's local-file loading, no network
    assert vit.pos_embed.shape == (1, 5, 32) and source.pos_embed.shape == (1, 17, 32)
    assert torch.equal(vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(vit.pos_embed[:, 0], source.pos_embed[:, 0])  # the class token's entry is kept as it is
    # the same file as model.pretrained_path (offline: timm's state dict saved where there was internet)
    model = build_model(_cfg(32, views=["roi", "frame"], shared_backbone=False,
                             pretrained_path=str(tmp_path / "vit64.pth")), 79)
    for backbone in model.backbones:
        torch.testing.assert_close(backbone.pos_embed, vit.pos_embed)
        assert torch.equal(backbone.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)


def test_backbone_kwargs_are_checked():
    with pytest.raises(ConfigError, match=r"img_size \(by data.image_size\)"):
        _cfg(backbone_kwargs={"img_size": 64})
    with pytest.raises(ConfigError, match="model.pretrained"):
        _cfg(backbone_kwargs={"pretrained": True})
    with pytest.raises(ValueError, match=r"does not take the keyword arguments .*model.backbone_kwargs"):
        build_model(Config.model_validate({"model": {"backbone": "wrn10_1", "backbone_kwargs": {"depth": 4}}}), 5)
    with pytest.raises(ConfigError, match="frozen_blocks"):
        _cfg(frozen_blocks=-1)


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x)["logits"].mean(0), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_is_switched_on_and_gives_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    plain = build_model(_cfg(views=["roi", "ctx3"], shared_backbone=False, fusion="attention"), 79)
    torch.manual_seed(0)
    ckpt = build_model(_cfg(views=["roi", "ctx3"], shared_backbone=False, fusion="attention",
                            grad_checkpointing=True), 79)
    assert all(b.grad_checkpointing for b in ckpt.backbones) and not any(b.grad_checkpointing for b in plain.backbones)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, y = torch.randn(3, 2, 3, 32, 32), torch.tensor([0, 5, 78])
    expected, got = _grads(plain, x, y), _grads(ckpt, x, y)
    assert len(calls) == 2 * 4  # every block of both backbones went through the checkpoint
    assert expected.keys() == got.keys() and len(got) == len(list(ckpt.parameters()))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_grad_checkpointing_of_a_backbone_without_it_is_a_clear_error():
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        build_model(Config.model_validate({"model": {"backbone": "wrn10_1", "grad_checkpointing": True}}), 5)


def test_frozen_blocks_get_no_gradient_and_do_not_move_while_the_rest_trains():
    torch.manual_seed(0)
    cfg = _cfg(frozen_blocks=2, grad_checkpointing=True)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"weight_decay": 0.1, "lr": 1e-2})})
    model = build_model(cfg, 79)
    vit = model.backbones[0]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    stem = {"backbones.0.cls_token", "backbones.0.pos_embed", "backbones.0.patch_embed.proj.weight",
            "backbones.0.patch_embed.proj.bias"}
    in_blocks = {f"backbones.0.{n}" for i in (0, 1) for n, _ in vit.named_parameters() if n.startswith(f"blocks.{i}.")}
    assert frozen == stem | in_blocks
    optimizer = build_optimizer(model, cfg.optim)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = _grads(model, torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4]))
    optimizer.step()
    assert not frozen & grads.keys()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, before[name]), name
        elif name.startswith("backbones.0.blocks.2.") or name.startswith("heads."):
            assert not torch.equal(p, before[name]), name
    assert all(not p.requires_grad for p in vit.blocks[1].parameters())
    assert all(p.requires_grad for p in vit.blocks[2].parameters()) and vit.norm.weight.requires_grad


def test_frozen_blocks_errors_are_clear():
    with pytest.raises(ValueError, match=r"frozen_blocks=5: the backbone VisionTransformer has only 4 blocks"):
        build_model(_cfg(frozen_blocks=5), 79)
    with pytest.raises(ValueError, match=r"frozen_blocks=1: the backbone WideResNet has no \.blocks"):
        configure_backbone(create_backbone("wrn10_1"), frozen_blocks=1)
    every = build_model(_cfg(frozen_blocks=4), 79)  # all blocks frozen: only the final norm and heads train
    assert not any(p.requires_grad for p in every.backbones[0].blocks.parameters())


def test_toy_twin_keeps_the_gpu_recipe_and_only_shrinks_it():
    real = load_config(Config, REPO / "cfg" / "gpu_context_dinov2.yaml")
    toy = load_config(Config, REPO / "cfg" / "gpu_context_toy.yaml")
    assert toy.data.views == real.data.views == ["roi", "ctx3", "ctx5", "frame"]
    for key in ("shared_backbone", "fusion", "aux_ranks", "grad_checkpointing"):
        assert getattr(toy.model, key) == getattr(real.model, key)
    assert real.model.frozen_blocks == 12 and toy.model.frozen_blocks == 2 and toy.loss == real.loss
    assert real.model.backbone == "vit_large_patch14_dinov2.lvd142m" and real.model.pretrained
    assert real.train.amp == "bf16" and real.data.image_size == 224 and not toy.model.pretrained
