"""The `reference` backend: the study's per-sample torchvision transforms in a DataLoader — the speed and parity baseline."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fasttrain.config import DataConfig
from fasttrain.data.pipelines.augment_policies import crop_mode, is_policy, torchvision_policy, with_erasing
from fasttrain.data.pipelines.base import BatchPipeline


def study_transform(cfg: DataConfig, augment: str) -> transforms.Compose:
    """ToPILImage → (RandomResizedCrop | RandomCrop with padding) → RandomHorizontalFlip → ToTensor → Normalize."""
    steps: list = [transforms.ToPILImage()]
    augment, policy = crop_mode(augment), augment
    if augment == "rrc":
        steps.append(transforms.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio)))
    elif augment == "pad_crop":
        steps.append(transforms.RandomCrop(cfg.image_size, padding=cfg.pad))
    if augment != "none":
        steps.append(transforms.RandomHorizontalFlip(cfg.hflip))
    if is_policy(policy):
        steps.append(torchvision_policy(cfg))
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    return transforms.Compose(steps)


class _SeededBatches(Dataset):
    """Items are whole batches, (sample indices, torch seed): the transforms run sample after sample from
    one seeding per batch, in whichever worker gets the batch (a plain DataLoader's cost, no per-sample seeding)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: transforms.Compose):
        self.images, self.labels, self.transform = images, labels, transform

    def __getitem__(self, item: tuple[np.ndarray, int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices, seed = item
        # fork_rng keeps the caller's global RNG untouched when there are no worker processes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images = torch.stack([self.transform(np.asarray(self.images[i])) for i in indices])
        return images, torch.from_numpy(self.labels[indices])


class _PlannedBatches:
    """The sampler of whole batches whose contents the pipeline sets before each pass (so workers can persist)."""

    def __init__(self):
        self.batches: list[tuple[np.ndarray, int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ReferencePipeline(BatchPipeline):
    backend = "reference"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampler = _PlannedBatches()
        workers = self.cfg.loader_workers
        self.loader = DataLoader(
            _SeededBatches(self.images, self.labels,
                           with_erasing(study_transform(self.cfg, self.augment), self.cfg, self.train)),
            sampler=self.sampler,
            batch_size=None,  # the dataset builds whole batches
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.batches = [(batch, self.plan.batch_seed(epoch, k))
                                for k, batch in enumerate(self.plan.batches(epoch, start), start)]
        if not self.sampler.batches:
            return
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True).to(self.output_dtype)
            yield images.contiguous(memory_format=torch.channels_last), labels.to(self.device, non_blocking=True)
