"""Model factory: any timm backbone by name (the small WRNs are registered on import) + heads.

`build_model(cfg, num_classes)` builds the `Classifier` a `Config` describes. Weights:
`model.pretrained: true` downloads timm's weights (only when asked; a clear error offline);
`model.pretrained_path` loads a local file: a training checkpoint of this project (the whole model)
or a backbone state dict (timm / torchvision layout; classifier weights are ignored).

Backbones built for one input size (timm ViTs: `vit_large_patch14_dinov2.lvd142m` defaults to 518 px) are
built for `data.image_size` (timm resamples pretrained position embeddings to it on loading);
`model.grad_checkpointing` and `model.frozen_blocks` (`configure_backbone`) fit a large ViT on one GPU.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import timm
import torch.nn as nn

from src.models.classifier import Classifier
from src.models.heads import LoopHeads, MultiHead
from src.models.wrn import WideResNet, wide_resnet_cifar  # importing it registers wrn10_2, wrn16_4, ... in timm

__all__ = ["build_model", "create_backbone", "configure_backbone", "takes_img_size", "Classifier", "MultiHead",
           "LoopHeads", "WideResNet"]

_GENERIC_WRN = re.compile(r"wrn(\d+)_(\d+)$")
# Top-level parameters of a timm ViT that come before its blocks: frozen with them (model.frozen_blocks).
_VIT_STEM = ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")


def takes_img_size(name: str) -> bool:
    """Whether timm builds `name` for one fixed input size, given as `img_size` (ViTs, Swin, ...: their
    pretrained cfg says fixed_input_size), rather than for any size (CNNs, the WRNs)."""
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag: timm.create_model names it
        return False
    return bool(pretrained_cfg is not None and pretrained_cfg.fixed_input_size)


def create_backbone(name: str, pretrained: bool = False, drop_rate: float = 0.0, img_size: int | None = None,
                    **kwargs) -> nn.Module:
    """A timm model without classifier (outputs pooled features, `.num_features` wide).

    Names like 'wrn22_3' that are not registered build the generic WRN-d-k. img_size: the input side, passed
    to models built for a fixed size (`takes_img_size`; ignored by the others). kwargs: further keyword
    arguments of the timm model (model.backbone_kwargs)."""
    generic = _GENERIC_WRN.match(name)
    if generic and not timm.is_model(name):
        build = functools.partial(wide_resnet_cifar, int(generic[1]), int(generic[2]))
    elif not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown backbone {name!r}: not a timm model and not of the form wrn<depth>_<widen>")
    else:
        build = functools.partial(timm.create_model, name)
        if img_size is not None and takes_img_size(name):
            kwargs["img_size"] = img_size
    try:
        return build(pretrained=pretrained, num_classes=0, drop_rate=drop_rate, **kwargs)
    except TypeError as err:  # a keyword the model's constructor does not take
        if not kwargs:
            raise
        raise ValueError(f"backbone {name!r} does not take the keyword arguments {kwargs} "
                         f"(model.backbone_kwargs): {err}") from None
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for {name!r} ({type(err).__name__}: {err}). Offline? "
            "Download them once where there is internet (timm.create_model(name, pretrained=True) fills "
            "the Hugging Face cache), or save them to a file and set model.pretrained_path=FILE "
            "with model.pretrained=false") from None


def configure_backbone(backbone: nn.Module, grad_checkpointing: bool = False, frozen_blocks: int = 0) -> nn.Module:
    """Switch on gradient checkpointing (timm's set_grad_checkpointing) and freeze the stem (patch embedding,
    class/register tokens, position embedding) and the first `frozen_blocks` of `backbone.blocks`
    (requires_grad False). ValueError, one line, when the backbone supports neither."""
    name = type(backbone).__name__
    if grad_checkpointing:
        try:
            backbone.set_grad_checkpointing(True)
        except (AttributeError, AssertionError, NotImplementedError):
            raise ValueError(f"model.grad_checkpointing: the backbone {name} does not support gradient "
                             "checkpointing (timm's set_grad_checkpointing); set it to false") from None
        if getattr(backbone, "grad_checkpointing", True) is not True:  # timm models record it; others may not
            raise ValueError(f"model.grad_checkpointing: the backbone {name} did not switch it on; set it to false")
    if frozen_blocks:
        blocks = getattr(backbone, "blocks", None)
        if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            raise ValueError(f"model.frozen_blocks={frozen_blocks}: the backbone {name} has no .blocks of "
                             "transformer blocks (a timm ViT has); set it to 0")
        if frozen_blocks > len(blocks):
            raise ValueError(f"model.frozen_blocks={frozen_blocks}: the backbone {name} has only {len(blocks)} "
                             "blocks")
        stem = [getattr(backbone, part) for part in _VIT_STEM if getattr(backbone, part, None) is not None]
        for part in [*stem, *blocks[:frozen_blocks]]:
            for param in [part] if isinstance(part, nn.Parameter) else part.parameters():
                param.requires_grad_(False)
    return backbone


def _load_backbone_state(backbone: nn.Module, state: dict, path: Path):
    """Load a backbone state dict, skipping the classifier and keys whose shapes do not fit."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        # a ViT's weights for another input size (DINOv2's are for 518 px): resample the grid, as timm does
        from timm.layers import resample_abs_pos_embed
        prefix = 0 if getattr(backbone, "no_embed_class", False) else getattr(backbone, "num_prefix_tokens", 1)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(backbone.patch_embed.grid_size),
                                                    num_prefix_tokens=prefix)
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
    sizes = cfg.data.input_sizes()
    backbones = [configure_backbone(create_backbone(m.backbone, m.pretrained, m.drop_rate,
                                                    sizes[k] if n_backbones > 1 else cfg.data.image_size,
                                                    **m.backbone_kwargs), m.grad_checkpointing, m.frozen_blocks)
                 for k in range(n_backbones)]
    for k, backbone in enumerate(backbones):
        check_input_sizes(backbone, m.backbone, sizes if n_backbones == 1 else sizes[k:k + 1])
    model = Classifier(backbones, num_views, num_classes, m.num_heads, m.head_hidden, m.fusion,
                       aux_classes, channels_last=m.channels_last, avgk_head=m.avgk_head,
                       avgk_detach=m.avgk_detach)
    if m.pretrained_path:
        load_pretrained_path(model, m.pretrained_path)
    return model
