"""Small CIFAR-style Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016), registered with timm.

WRN-d-k: a 3x3 stem with 16 channels, then three groups of n = (d - 4) / 6 pre-activation basic
blocks with widths 16k, 32k, 64k (strides 1, 2, 2), BN-ReLU, global pooling. Made for 32..64 px inputs,
so they train on a CPU in minutes. After `import src.models`, `timm.create_model('wrn16_4')` works like
for any timm model (num_classes, global_pool, drop_rate, forward_features / forward_head).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = (nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
                         if stride != 1 or in_chs != out_chs else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in the reference implementation.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen for small images; timm-style interface."""

    def __init__(self, depth: int = 16, widen: int = 4, num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = "avg", drop_rate: float = 0.0, block_drop_rate: float = 0.0, **_):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            layers = [PreActBlock(widths[i] if b == 0 else widths[i + 1], widths[i + 1],
                                  stride if b == 0 else 1, block_drop_rate) for b in range(blocks)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = self.default_cfg = {"input_size": (3, 32, 32), "num_classes": num_classes}
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.stages(self.stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_wrn(depth: int, widen: int, pretrained: bool = False, **kwargs) -> WideResNet:
    if pretrained:
        raise ValueError(f"no pretrained weights exist for the small WRN-{depth}-{widen}; "
                         "set model.pretrained=false (or model.pretrained_path to your own checkpoint)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return WideResNet(depth, widen, **kwargs)


def wide_resnet_cifar(depth: int, widen: int, **kwargs) -> WideResNet:
    """Any WRN-depth-widen (not registered by name; the registered ones cover common sizes)."""
    return _create_wrn(depth, widen, **kwargs)


@register_model
def wrn10_1(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-10-1: 0.08M parameters; seconds-long smoke runs (cfg/demo_tiny.yaml)."""
    return _create_wrn(10, 1, pretrained, **kwargs)


@register_model
def wrn10_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-10-2: 0.3M parameters; the fastest (tests, quick demos)."""
    return _create_wrn(10, 2, pretrained, **kwargs)


@register_model
def wrn16_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-2: 0.7M parameters."""
    return _create_wrn(16, 2, pretrained, **kwargs)


@register_model
def wrn16_4(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-4: 2.7M parameters."""
    return _create_wrn(16, 4, pretrained, **kwargs)


@register_model
def wrn16_8(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-8: 11M parameters."""
    return _create_wrn(16, 8, pretrained, **kwargs)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10: 36M parameters (the paper's CIFAR model)."""
    return _create_wrn(28, 10, pretrained, **kwargs)
