"""The behaviour every backend shares: input checks, epoch/position bookkeeping, resume, output format."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from fasttrain.config import DataConfig
from fasttrain.data.pipelines.sampling import EpochPlan
from fasttrain.errors import UserError

OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def normalize_scale_shift(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) so that normalized = pixel_uint8 * scale + shift."""
    mean = np.asarray(cfg.mean, dtype=np.float64)
    std = np.asarray(cfg.std, dtype=np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def check_inputs(cfg: DataConfig, images: np.ndarray, labels: np.ndarray, *, batch_size: int, rank: int, world_size: int) -> None:
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise UserError(
            f"pipeline input must be uint8 images of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}; "
            "rebuild the cache with `python -m fasttrain.data prepare`"
        )
    if labels.shape != (images.shape[0],):
        raise UserError(
            f"pipeline got {images.shape[0]} images but labels of shape {tuple(labels.shape)}; "
            "the cache is inconsistent, rebuild it with `python -m fasttrain.data prepare`"
        )
    if images.shape[1:3] != (cfg.image_size, cfg.image_size):
        raise UserError(
            f"cached images are {images.shape[1]}x{images.shape[2]} but data.image_size is {cfg.image_size}; "
            f"set data.image_size = {images.shape[1]} or rebuild the cache at {cfg.image_size}x{cfg.image_size}"
        )
    if cfg.augment == "pad_crop" and cfg.pad < 0:
        raise UserError(f"data.pad must be >= 0 for augment = \"pad_crop\", got {cfg.pad}")
    if batch_size < 1:
        raise UserError(f"per-rank batch size must be at least 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world size {world_size}")


class BatchPipeline:
    """Iterable of (images, labels) batches on `device` with set_epoch / state_dict / load_state_dict.

    Epoch rules: `set_epoch(e)` selects epoch e; iteration continues a partly consumed epoch
    (e.g. after `load_state_dict`) and starts at batch 0 otherwise. An `__iter__` that finds the
    current epoch fully consumed moves on to the next epoch by itself.
    """

    backend = ""

    def __init__(
        self,
        cfg: DataConfig,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        train: bool,
        batch_size: int,
        rank: int,
        world_size: int,
        device: torch.device,
        seed: int,
    ):
        check_inputs(cfg, images, labels, batch_size=batch_size, rank=rank, world_size=world_size)
        self.cfg = cfg
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.train = train
        self.device = torch.device(device)
        self.augment = cfg.augment if train else "none"
        self.output_dtype = OUTPUT_DTYPES[cfg.output_dtype]
        self.plan = EpochPlan(len(images), train=train, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed)
        self._epoch = 0
        self._position = 0

    @property
    def num_samples(self) -> int:
        return self.plan.num_samples

    def __len__(self) -> int:
        return self.plan.num_batches

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch or self._position >= len(self):
            self._epoch, self._position = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, position = state.get("epoch"), state.get("position")
        if not isinstance(epoch, int) or not isinstance(position, int) or not 0 <= position <= len(self):
            raise UserError(
                f"data pipeline state {state!r} does not fit this pipeline ({len(self)} batches per epoch); "
                "resume with the same data, batch size and world size, or start a fresh run"
            )
        self._epoch, self._position = epoch, position

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._position >= len(self):
            self._epoch, self._position = self._epoch + 1, 0
        epoch, start = self._epoch, self._position
        for k, batch in enumerate(self._batches(epoch, start), start):
            self._position = k + 1
            yield batch

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start+1, … of `epoch` (each backend's own work)."""
        raise NotImplementedError

    def _labels_on_device(self, indices: np.ndarray) -> torch.Tensor:
        labels = torch.from_numpy(self.labels[indices])
        if self.device.type == "cuda":
            return labels.pin_memory().to(self.device, non_blocking=True)
        return labels
