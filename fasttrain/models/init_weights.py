"""Initialisation shared by the conv families: Kaiming for convs and hidden linears, small classifier."""

from __future__ import annotations

import torch.nn as nn


def init_conv_family(model: nn.Module, classifier: nn.Linear) -> None:
    """Kaiming-normal (fan_in, ReLU gain) for every conv and hidden linear layer; unit norms.

    fan_in (not torchvision's fan_out) keeps the forward signal's scale through a plain stack of
    conv+ReLU layers, which is what lets a network without BatchNorm or shortcuts (VGG without
    BN, ResNet without skips) start training. The classifier gets N(0, 0.01) weights so the
    initial logits are near zero and the first loss is close to ln(num_classes).
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)
