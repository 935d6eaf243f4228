"""VGG-11/13/16/19 networks with optional BatchNorm, a width multiplier and a three-layer head sized for 64×64 inputs."""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from fasttrain.models.layers import init_conv_family
from fasttrain.models.layers import make_norm2d, norm_and_bias_names

POOL = "M"
LayerSpec = Union[int, str]

VGG_CONFIGS: dict[str, tuple[LayerSpec, ...]] = {
    "vgg11": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg13": (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    "vgg19": (
        64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
        512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL,
    ),
}

# head: (pooled grid side, hidden width at width=1.0)
VGG_HEADS = {"compact": (2, 512), "imagenet": (7, 4096)}


class VGG(nn.Module):
    """[3×3 conv → norm → ReLU] × n with 2×2 max-pools, then three fully connected layers.

    head "compact" (default): a 64×64 image leaves a 2×2×512 map after five pools; it is
    flattened (2048 values, spatial layout kept) into Linear 2048→512 → ReLU → Dropout →
    Linear 512→512 → ReLU → Dropout → Linear 512→classes. The adaptive pool to 2×2 is the
    identity at 64×64 and lets other input sizes ≥ 32 work. Hidden widths scale with `width`.
    head "imagenet": torchvision's adaptive 7×7 pool and 4096-wide classifier (used to check
    the architecture against torchvision).
    Layer names follow torchvision's (features.N, classifier.N), so its weights load as is.
    The knobs' types, ranges and defaults are the builders' (fasttrain.models.builders).
    """

    def __init__(
        self,
        config: Sequence[LayerSpec],
        num_classes: int = 200,
        *,
        norm: str,
        dropout: float,
        width: float,
        head: str,
    ) -> None:
        super().__init__()

        layers: list[nn.Module] = []
        in_ch = 3
        for spec in config:
            if spec == POOL:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out_ch = max(1, round(int(spec) * width))
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1))
            if norm == "bn":
                layers.append(make_norm2d(norm, out_ch))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)

        grid, hidden_at_full_width = VGG_HEADS[head]
        hidden = max(1, round(hidden_at_full_width * width))
        self.avgpool = nn.AdaptiveAvgPool2d((grid, grid))
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * grid * grid, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_conv_family(self, self.classifier[-1])

    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay: BatchNorm scales and shifts, and biases."""
        return norm_and_bias_names(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
