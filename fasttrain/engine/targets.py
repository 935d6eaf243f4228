"""Training targets: mixup/cutmix (timm's Mixup) and the loss against hard labels or soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fasttrain.config import TrainConfig


def build_mixup(train: TrainConfig, num_classes: int):
    """timm's Mixup when [train] mixup or cutmix is on (label smoothing folded into its targets), else None."""
    if train.mixup <= 0 and train.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=train.mixup, cutmix_alpha=train.cutmix, prob=train.mix_prob,
                 label_smoothing=train.label_smoothing, num_classes=num_classes)


def training_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean cross-entropy in fp32: against class indices with label smoothing, or against soft targets
    (rows of class probabilities from mixup/cutmix, whose smoothing is already in them)."""
    if targets.ndim == 2:
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
