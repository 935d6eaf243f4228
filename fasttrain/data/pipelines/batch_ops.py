"""Device ops on finished train batches, around any backend: random erasing (dali, torch) and progressive resizing."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fasttrain.config import DataConfig
from fasttrain.data.pipelines.augment import EraseBoxes, batch_erase_boxes, device_erasing, epoch_image_size
from fasttrain.data.pipelines.base import BatchPipeline


def erase(images: torch.Tensor, boxes: EraseBoxes) -> torch.Tensor:
    """Zero each sample's box in an NCHW batch (any memory format) in one masked fill on its device.

    The boxes travel in one host→device copy, from pinned memory on CUDA so it does not make the host wait."""
    count, _, height, width = images.shape
    device = images.device
    packed = torch.from_numpy(np.stack([boxes.top, boxes.left, boxes.height, boxes.width]).astype(np.int64))
    if device.type == "cuda":
        packed = packed.pin_memory()
    top, left, box_h, box_w = packed.to(device, non_blocking=True)[:, :, None].unbind(0)
    rows = torch.arange(height, device=device)[None]
    cols = torch.arange(width, device=device)[None]
    in_rows = (rows >= top) & (rows < top + box_h)
    in_cols = (cols >= left) & (cols < left + box_w)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # N, 1, H, W
    return images.masked_fill(mask, 0)


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """An NCHW batch resized on its device (bilinear, antialiased), channels_last kept."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.to(images.dtype).contiguous(memory_format=torch.channels_last)


class TrainBatchOps:
    """A train pipeline whose batches are erased and/or resized on the device after the backend made them.

    Everything random is a pure function of (seed, epoch, rank, batch) — the batch index is the wrapped
    pipeline's position — and the size a pure function of the epoch, so resume stays exact. Length,
    epoch selection and state are the wrapped pipeline's own.
    """

    def __init__(self, inner: BatchPipeline, cfg: DataConfig):
        self.inner, self.cfg = inner, cfg
        self.erasing = device_erasing(cfg, inner.backend)

    backend = property(lambda self: self.inner.backend)
    num_samples = property(lambda self: self.inner.num_samples)
    plan = property(lambda self: self.inner.plan)

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def image_size(self, epoch: int) -> int:
        return epoch_image_size(self.cfg, epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.inner.plan
        for images, labels in self.inner:
            state = self.inner.state_dict()
            epoch, batch = state["epoch"], state["position"] - 1
            if self.erasing > 0:
                images = erase(images, batch_erase_boxes(self.cfg, self.backend, plan.seed, epoch, plan.rank, plan.world_size,
                                                         batch, images.shape[0], images.shape[2], images.shape[3]))
            yield resize_batch(images, self.image_size(epoch)), labels
