"""Progressive resizing: the train image size of each epoch (a few fixed sizes) and the device resize to it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fasttrain.config import DataConfig


def epoch_image_size(cfg: DataConfig, epoch: int) -> int:
    """Train size of `epoch` (0-based): progressive_start_size up to progressive_start_epoch, then linear
    growth rounded down to a multiple of progressive_step, and image_size from progressive_end_epoch on
    (ffcv-imagenet's ramp). Off (progressive_start_size = 0): always image_size."""
    start, full = cfg.progressive_start_size, cfg.image_size
    if start == 0 or epoch >= cfg.progressive_end_epoch:
        return full
    if epoch <= cfg.progressive_start_epoch:
        return start
    share = (epoch - cfg.progressive_start_epoch) / (cfg.progressive_end_epoch - cfg.progressive_start_epoch)
    size = start + share * (full - start)
    return min(full, int(size // cfg.progressive_step) * cfg.progressive_step)


def schedule_sizes(cfg: DataConfig, epochs: int) -> list[int]:
    """The distinct train sizes of a run, in order (a compiled model compiles once per size)."""
    sizes: list[int] = []
    for epoch in range(epochs):
        size = epoch_image_size(cfg, epoch)
        if not sizes or sizes[-1] != size:
            sizes.append(size)
    return sizes


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """An NCHW batch resized on its device (bilinear, antialiased), channels_last kept."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.to(images.dtype).contiguous(memory_format=torch.channels_last)
