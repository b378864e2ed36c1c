"""Small WRNs in timm, batched heads vs the loop reference, view fusion, aux heads, weight loading."""
import math

import pytest
import timm
import torch

from src.config import Config
from src.models import LoopHeads, MultiHead, build_model, create_backbone
from src.models.classifier import Classifier
from src.models.wrn import wide_resnet_cifar


def _cfg(**model):
    views = model.pop("views", ["roi"])
    return Config.model_validate({"data": {"views": views}, "model": {"backbone": "wrn10_1", **model}})


@pytest.mark.parametrize("name,features,params_m", [("wrn16_4", 256, 2.75), ("wrn10_2", 128, 0.30)])
def test_wrn_registered_in_timm(name, features, params_m):
    model = timm.create_model(name, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model.num_features == features
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(params_m, rel=0.05)
    assert timm.create_model(name, num_classes=0)(torch.randn(1, 3, 40, 40)).shape == (1, features)
    assert name in timm.list_models("wrn*")


def test_wrn_errors():
    with pytest.raises(ValueError, match="no pretrained"):
        timm.create_model("wrn16_4", pretrained=True)
    with pytest.raises(ValueError, match="6n"):
        create_backbone("wrn12_2")
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("no_such_net")
    assert create_backbone("wrn22_1").num_features == 64  # generic WRN-d-k by name


def test_pretrained_offline_error_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="pretrained_path"):
        create_backbone("resnet18", pretrained=True)


@pytest.mark.parametrize("hidden", [None, 0, 5])
def test_batched_heads_equal_loop(hidden):
    torch.manual_seed(0)
    loop = LoopHeads(12, 4, num_heads=3, hidden=hidden).double()
    multi = loop.copy_to(MultiHead(12, 4, num_heads=3, hidden=hidden).double())
    x1 = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    out_loop, out_multi = loop(x1), multi(x2)
    assert out_multi.shape == (3, 6, 4)
    assert torch.allclose(out_loop, out_multi)
    w = torch.randn_like(out_loop)
    (out_loop * w).sum().backward()
    (out_multi * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad)
    first = loop.heads[1][0] if hidden != 0 else loop.heads[1]
    width = multi.hidden or 4
    assert torch.allclose(first.weight.grad.t(), multi.w1.grad[:, width:2 * width])


def test_multihead_init_matches_linear_scale():
    heads = MultiHead(256, 10, num_heads=4)
    bound = 1 / 16
    assert heads.w1.abs().max() <= bound and heads.w1.abs().max() > 0.9 * bound


@pytest.mark.parametrize("fusion", ["concat", "mean", "attention"])
@pytest.mark.parametrize("shared", [True, False])
def test_views_fusion_and_aux(fusion, shared):
    cfg = _cfg(views=["roi", "ctx3", "frame"], fusion=fusion, shared_backbone=shared, num_heads=2, head_hidden=8)
    model = build_model(cfg, 79, aux_classes={"phylum": 5, "order": 11})
    assert len(model.backbones) == (1 if shared else 3)
    out = model(torch.randn(4, 3, 3, 16, 16))
    assert out["logits"].shape == (2, 4, 79)
    assert out["aux"]["phylum"].shape == (4, 5) and out["aux"]["order"].shape == (4, 11)
    assert model.num_features == (64 * 3 if fusion == "concat" else 64)
    with pytest.raises(ValueError, match="views"):
        model(torch.randn(4, 2, 3, 16, 16))


def test_single_view_accepts_4d_and_channels_last():
    model = build_model(_cfg(channels_last=True), 10).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x)["logits"], model(x[:, None])["logits"], atol=1e-6)


def test_pretrained_path_checkpoint_and_backbone_state(tmp_path):
    cfg = _cfg(num_heads=2)
    source = build_model(cfg, 10)
    torch.save({"model": source.state_dict(), "classes": list("abcdefghij")}, tmp_path / "checkpoint.pt")
    loaded = build_model(_cfg(num_heads=2, pretrained_path=str(tmp_path / "checkpoint.pt")), 10)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))

    backbone = wide_resnet_cifar(10, 1, num_classes=5)  # a classifier of another size is ignored
    torch.save({"state_dict": {f"module.{k}": v for k, v in backbone.state_dict().items()}}, tmp_path / "bb.pth")
    model = build_model(_cfg(pretrained_path=str(tmp_path / "bb.pth"), views=["roi", "ctx3"],
                             shared_backbone=False), 10)
    for b in model.backbones:
        assert torch.equal(b.stem.weight, backbone.stem.weight)

    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no parameter"):
        build_model(_cfg(pretrained_path=str(tmp_path / "other.pth")), 10)
    with pytest.raises(FileNotFoundError):
        build_model(_cfg(pretrained_path=str(tmp_path / "missing.pt")), 10)


def test_classifier_rejects_bad_setup():
    with pytest.raises(ValueError, match="fusion"):
        Classifier([create_backbone("wrn10_1")], 2, 10, fusion="sum")


def test_features_in_output_and_optional_avgk_head():
    x = torch.randn(3, 3, 32, 32)
    plain = build_model(_cfg(num_heads=2), 79).eval()
    out = plain(x)
    assert "avgk" not in out and plain.avgk is None
    assert torch.allclose(out["features"], plain.features(x)) and out["features"].shape == (3, plain.num_features)
    model = Classifier([create_backbone("wrn10_1")], 1, 79, avgk_head=True).eval()
    out = model(x)
    assert out["avgk"].shape == (3, 79) and torch.allclose(model.avgk.bias, torch.full((79,), -math.log(78)))
    assert torch.allclose(out["avgk"], model.avgk(out["features"]))


@pytest.mark.parametrize("detach", [True, False])
def test_avgk_head_on_detached_features_leaves_the_backbone_alone(detach):
    torch.manual_seed(0)
    model = Classifier([create_backbone("wrn10_1")], 1, 10, avgk_head=True, avgk_detach=detach)
    model(torch.randn(2, 3, 32, 32))["avgk"].sum().backward()
    backbone_grads = [p.grad for p in model.backbones.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert model.avgk.weight.grad.abs().sum() > 0  # the set head itself learns either way
    assert bool(backbone_grads) is not detach
