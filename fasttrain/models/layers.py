"""Layers shared by the model families: normalisation choices ("bn", "gn", "none") with GroupNorm's group count,
what gets no weight decay, and the conv families' initialisation."""

from __future__ import annotations

import math

import torch.nn as nn

NORM_LAYERS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
MAX_GROUPS = 32


def group_norm_groups(channels: int) -> int:
    """32 groups (the GroupNorm paper's default) when channels allow at least 2 per group.

    Otherwise the largest power of two ≤ 32 that divides `channels` and leaves at least 2
    channels per group (1 group for odd counts), so width-reduced variants still work:
    64 → 32, 48 → 16, 32 → 16, 8 → 4, 6 → 2, 3 → 1.
    """
    groups = math.gcd(MAX_GROUPS, channels)
    if groups > 1 and channels // groups < 2:
        groups //= 2
    return groups


def make_norm2d(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, GroupNorm or Identity over `channels` channels."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(group_norm_groups(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm kind {kind!r}")


def norm_and_bias_names(model: nn.Module) -> set[str]:
    """Names of every normalisation layer's parameters and of every bias: what a model's no_weight_decay() lists."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or param_name == "bias":
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def no_weight_decay_of(model: nn.Module) -> set[str]:
    """The parameter names `model.no_weight_decay()` declares; norms and biases for a module that declares none."""
    declared = getattr(model, "no_weight_decay", None)
    return set(declared()) if declared is not None else norm_and_bias_names(model)


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
