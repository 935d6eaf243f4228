"""ResNet and ResNeXt networks (torchvision's v1.5 layout) with the study's knobs: skips, norm, stem, depth, width."""

from __future__ import annotations

import math

from typing import Sequence

import torch
import torch.nn as nn

from fasttrain.models.layers import init_conv_family
from fasttrain.models.layers import make_norm2d, norm_and_bias_names
from fasttrain.models.registry import InvalidKnobValueError

BASE_WIDTHS = (64, 128, 256, 512)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, *, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)


def _shortcut(in_ch: int, out_ch: int, stride: int, norm: str) -> nn.Module:
    """Identity when shapes match, else the 1×1 projection (conv + norm)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(_conv(in_ch, out_ch, 1, stride, bias=norm == "none"), make_norm2d(norm, out_ch))


class BasicBlock(nn.Module):
    """Two 3×3 convs; with `skip` False the block has no shortcut at all (a plain conv pair)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, *, skip: bool, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = _conv(in_ch, planes, 3, stride, bias=bias)
        self.norm1 = make_norm2d(norm, planes)
        self.conv2 = _conv(planes, planes, 3, bias=bias)
        self.norm2 = make_norm2d(norm, planes)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, planes, stride, norm) if skip else None

    def last_conv_and_norm(self) -> tuple[nn.Conv2d, nn.Module]:
        return self.conv2, self.norm2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (grouped for ResNeXt, carries the stride) → 1×1 expand ×4."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        *,
        skip: bool,
        norm: str,
        cardinality: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        bias = norm == "none"
        inner = int(planes * base_width / 64) * cardinality
        out_ch = planes * self.expansion
        self.conv1 = _conv(in_ch, inner, 1, bias=bias)
        self.norm1 = make_norm2d(norm, inner)
        self.conv2 = _conv(inner, inner, 3, stride, groups=cardinality, bias=bias)
        self.norm2 = make_norm2d(norm, inner)
        self.conv3 = _conv(inner, out_ch, 1, bias=bias)
        self.norm3 = make_norm2d(norm, out_ch)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride, norm) if skip else None

    def last_conv_and_norm(self) -> tuple[nn.Conv2d, nn.Module]:
        return self.conv3, self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


class ResNet(nn.Module):
    """Stem → four stages of residual blocks → global average pool → dropout → linear.

    stem "cifar": 3×3 conv, stride 1, no max-pool (64×64 inputs keep a 64×64 first stage);
    stem "imagenet": torchvision's 7×7 stride-2 conv + 3×3 stride-2 max-pool.
    `width` multiplies the stem and the base stage widths 64/128/256/512.
    The knobs' types, ranges and defaults are the builders' (fasttrain.models.builders).
    """

    def __init__(
        self,
        block: str,
        num_classes: int = 200,
        *,
        layers: Sequence[int],
        skip: bool,
        norm: str,
        dropout: float,
        stem: str,
        width: float,
        zero_init_residual: bool,
        cardinality: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        block_class = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        block_extra = {"cardinality": cardinality, "base_width": base_width} if block == "bottleneck" else {}

        stem_ch = max(1, round(64 * width))
        stem_layers: list[nn.Module] = [
            _conv(3, stem_ch, 7 if stem == "imagenet" else 3, 2 if stem == "imagenet" else 1, bias=norm == "none"),
            make_norm2d(norm, stem_ch),
            nn.ReLU(inplace=True),
        ]
        if stem == "imagenet":
            stem_layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem_layers)

        if block == "bottleneck" and int(max(1, round(BASE_WIDTHS[0] * width)) * base_width / 64) < 1:
            raise InvalidKnobValueError(
                f"knobs width={width}, base_width={base_width} leave the grouped 3×3 convs of the first stage with "
                f"no channels per group; raise width or base_width (e.g. base_width={math.ceil(64 / max(1, round(BASE_WIDTHS[0] * width)))})"
            )
        stages = []
        in_ch = stem_ch
        for stage_index, (base, blocks) in enumerate(zip(BASE_WIDTHS, layers)):
            planes = max(1, round(base * width))
            stage = []
            for block_index in range(blocks):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                stage.append(block_class(in_ch, planes, stride, skip=skip, norm=norm, **block_extra))
                in_ch = planes * block_class.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

        init_conv_family(self, self.fc)
        if zero_init_residual and skip:
            # Each residual block starts as the identity; without shortcuts this would cut the signal.
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    conv, norm_layer = module.last_conv_and_norm()
                    nn.init.zeros_(conv.weight if isinstance(norm_layer, nn.Identity) else norm_layer.weight)

    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay: norm scales and shifts, and biases."""
        return norm_and_bias_names(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled (N, C) features the classifier sees."""
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))
