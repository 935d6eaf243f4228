"""Device ops on finished train batches, around any backend: random erasing (dali, torch) and progressive resizing."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from fasttrain.config import DataConfig
from fasttrain.data.pipelines.base import BatchPipeline
from fasttrain.data.pipelines.erasing import erase, erasing_rng, sample_erase_boxes
from fasttrain.data.pipelines.progressive import epoch_image_size, resize_batch


def needs_batch_ops(cfg: DataConfig, backend: str, train: bool) -> bool:
    # The reference backend erases per sample with torchvision's RandomErasing (the parity baseline).
    return train and ((cfg.erasing > 0 and backend != "reference") or cfg.progressive_start_size > 0)


class TrainBatchOps:
    """A train pipeline whose batches are erased and/or resized on the device after the backend made them.

    Everything random is a pure function of (seed, epoch, rank, batch) — the batch index is the wrapped
    pipeline's position — and the size a pure function of the epoch, so resume stays exact. Length,
    epoch selection and state are the wrapped pipeline's own.
    """

    def __init__(self, inner: BatchPipeline, cfg: DataConfig):
        self.inner, self.cfg = inner, cfg
        self.erasing = cfg.erasing if inner.backend != "reference" else 0.0

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
                rng = erasing_rng(plan.seed, epoch, plan.rank, plan.world_size, batch)
                images = erase(images, sample_erase_boxes(rng, images.shape[0], images.shape[2], images.shape[3], self.erasing))
            yield resize_batch(images, self.image_size(epoch)), labels
