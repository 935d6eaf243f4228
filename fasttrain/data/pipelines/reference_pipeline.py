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
from fasttrain.data.pipelines.sampling import sample_seed


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


class _SeededSamples(Dataset):
    """Items are (index, epoch) pairs; each sample's randomness is seeded from (seed, epoch, index)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: transforms.Compose, seed: int):
        self.images, self.labels, self.transform, self.seed = images, labels, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = item
        # fork_rng keeps the caller's global RNG untouched when there are no worker processes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            image = self.transform(np.asarray(self.images[index]))
        return image, int(self.labels[index])


class _PlannedBatches:
    """A batch sampler whose contents the pipeline sets before each pass (so workers can persist)."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

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
            _SeededSamples(self.images, self.labels, with_erasing(study_transform(self.cfg, self.augment), self.cfg, self.train),
                           self.plan.seed),
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.batches = [[(int(i), epoch) for i in batch] for batch in self.plan.batches(epoch, start)]
        if not self.sampler.batches:
            return
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True).to(self.output_dtype)
            yield images.contiguous(memory_format=torch.channels_last), labels.to(self.device, non_blocking=True)
