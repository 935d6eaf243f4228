"""Parameter and FLOP counts of a model (FlopCounterMode, 2 FLOPs per multiply-add), for tables, logs and MFU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fasttrain.models.registry import create_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def forward_flops(model: torch.nn.Module, image_size: int) -> float:
    """FLOPs of one eval-mode forward pass on one image (works on the meta device: shapes only)."""
    device = next(model.parameters()).device
    images = torch.zeros(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    with counter, torch.no_grad():
        model.eval()(images)
    model.train(was_training)
    return float(counter.get_total_flops())


def train_flops_per_image(model_name: str, knobs: dict, *, num_classes: int, image_size: int) -> float:
    """Forward + backward FLOPs of one training image; built on the meta device, nothing is computed."""
    with torch.device("meta"):
        model = create_model(model_name, num_classes, **knobs)
        images = torch.zeros(2, 3, image_size, image_size)
        labels = torch.zeros(2, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / 2
