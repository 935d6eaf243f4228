"""Test-time augmentation: the logits a model gives a batch under `[eval] tta` ("none" or "flip")."""

from __future__ import annotations

import torch

TTA_MODES = ("none", "flip")


def tta_logits(model: torch.nn.Module, images: torch.Tensor, tta: str) -> torch.Tensor:
    """model(images), or with "flip" the mean of the logits of each image and its horizontal mirror (float32)."""
    logits = model(images).float()
    if tta == "flip":
        # NCHW: dim 3 is the width; flip keeps channels_last memory format
        logits = (logits + model(images.flip(3)).float()) * 0.5
    elif tta != "none":
        raise ValueError(f"unknown tta {tta!r}")  # the config schema and the eval CLI admit only TTA_MODES
    return logits
