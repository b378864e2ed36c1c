"""Model factory: any timm backbone by name (the small WRNs are registered on import) + heads.

`build_model(cfg, num_classes)` builds the `Classifier` a `Config` describes. Weights:
`model.pretrained: true` downloads timm's weights (only when asked; a clear error offline);
`model.pretrained_path` loads a local file: a training checkpoint of this project (the whole model)
or a backbone state dict (timm / torchvision layout; classifier weights are ignored).
"""
from __future__ import annotations

import re
from pathlib import Path

import timm
import torch.nn as nn

from src.models.classifier import Classifier
from src.models.heads import LoopHeads, MultiHead
from src.models.wrn import WideResNet, wide_resnet_cifar  # importing it registers wrn10_2, wrn16_4, ... in timm

__all__ = ["build_model", "create_backbone", "Classifier", "MultiHead", "LoopHeads", "WideResNet"]

_GENERIC_WRN = re.compile(r"wrn(\d+)_(\d+)$")


def create_backbone(name: str, pretrained: bool = False, drop_rate: float = 0.0) -> nn.Module:
    """A timm model without classifier (outputs pooled features, `.num_features` wide).

    Names like 'wrn22_3' that are not registered build the generic WRN-d-k."""
    generic = _GENERIC_WRN.match(name)
    if generic and not timm.is_model(name):
        return wide_resnet_cifar(int(generic[1]), int(generic[2]), num_classes=0, drop_rate=drop_rate,
                                 pretrained=pretrained)
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown backbone {name!r}: not a timm model and not of the form wrn<depth>_<widen>")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, drop_rate=drop_rate)
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for {name!r} ({type(err).__name__}: {err}). Offline? "
            "Download them once where there is internet (timm.create_model(name, pretrained=True) fills "
            "the Hugging Face cache), or save them to a file and set model.pretrained_path=FILE "
            "with model.pretrained=false") from None


def _load_backbone_state(backbone: nn.Module, state: dict, path: Path):
    """Load a backbone state dict, skipping the classifier and keys whose shapes do not fit."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: no parameter of the backbone found in this file (wrong model?)")
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: {len(missing)} backbone parameters missing from the file, e.g. {missing[:3]}")
    backbone.load_state_dict(usable, strict=False)


def load_pretrained_path(model: Classifier, path: str | Path) -> Classifier:
    """Load local weights into `model` (a project checkpoint, or backbone weights for every backbone)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained_path: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        obj = load_file(str(path))
    else:
        from src.serialization import load_state_file
        obj = load_state_file(path)  # tensors and plain data only: loading never runs code from the file
    if isinstance(obj, dict) and "model" in obj and "classes" in obj:
        model.load_state_dict(obj["model"])
        return model
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    for backbone in model.backbones:
        _load_backbone_state(backbone, state, path)
    return model


def check_input_sizes(backbone: nn.Module, name: str, sizes) -> None:
    """ValueError when a backbone with a fixed input size (a timm ViT's patch embedding) is given views of
    another size; CNNs with global pooling take any size."""
    patch_embed = getattr(backbone, "patch_embed", None)
    fixed = getattr(patch_embed, "img_size", None)
    if fixed is None or not getattr(patch_embed, "strict_img_size", False):
        return
    wrong = sorted({s for s in sizes if (s, s) != tuple(fixed)})
    if wrong:
        raise ValueError(f"model.backbone {name} takes {fixed[0]}x{fixed[1]} px inputs only, but views of "
                         f"{', '.join(map(str, wrong))} px are configured (data.image_size, data.view_sizes): use "
                         "a CNN backbone or set the sizes to the backbone's")


def build_model(cfg, num_classes: int, aux_classes: dict[str, int] | None = None) -> Classifier:
    """The Classifier for a `Config` (uses cfg.model and the number of views in cfg.data.views).

    aux_classes: {rank: number of taxa} for the auxiliary per-rank heads (cfg.model.aux_ranks)."""
    m = cfg.model
    num_views = len(cfg.data.views)
    n_backbones = 1 if m.shared_backbone else num_views
    backbones = [create_backbone(m.backbone, m.pretrained, m.drop_rate) for _ in range(n_backbones)]
    sizes = cfg.data.input_sizes()
    for k, backbone in enumerate(backbones):
        check_input_sizes(backbone, m.backbone, sizes if n_backbones == 1 else sizes[k:k + 1])
    model = Classifier(backbones, num_views, num_classes, m.num_heads, m.head_hidden, m.fusion,
                       aux_classes, channels_last=m.channels_last, avgk_head=m.avgk_head,
                       avgk_detach=m.avgk_detach)
    if m.pretrained_path:
        load_pretrained_path(model, m.pretrained_path)
    return model
