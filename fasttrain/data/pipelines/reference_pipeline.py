"""The `reference` backend: the study's per-sample torchvision transforms in a DataLoader — the speed and parity baseline."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fasttrain.config import DataConfig
from fasttrain.data.pipelines.augment import ERASE_RATIO, ERASE_SCALE, MODES, torch_batch_seed
from fasttrain.data.pipelines.base import BatchPipeline


def study_transform(cfg: DataConfig, augment: str) -> transforms.Compose:
    """ToPILImage → (RandomResizedCrop | RandomCrop with padding) → RandomHorizontalFlip → policy → ToTensor → Normalize."""
    steps: list = [transforms.ToPILImage()]
    mode = MODES[augment]
    if mode.crop == "rrc":
        steps.append(transforms.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio)))
    elif mode.crop == "pad_crop":
        steps.append(transforms.RandomCrop(cfg.image_size, padding=cfg.pad))
    if mode.crop != "none":
        steps.append(transforms.RandomHorizontalFlip(cfg.hflip))
    if augment == "randaugment":
        steps.append(transforms.RandAugment(num_ops=cfg.randaugment_n, magnitude=cfg.randaugment_m))
    elif augment == "trivialaugment":
        steps.append(transforms.TrivialAugmentWide())
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    return transforms.Compose(steps)


def with_erasing(transform: transforms.Compose, cfg: DataConfig, train: bool) -> transforms.Compose:
    """The transform followed by torchvision's RandomErasing (after Normalize) in training: this backend erases
    per sample (the parity baseline for the device erasing of the others)."""
    if not train or cfg.erasing <= 0:
        return transform
    return transforms.Compose([transform, transforms.RandomErasing(p=cfg.erasing, scale=ERASE_SCALE, ratio=ERASE_RATIO)])


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
        plan = self.plan
        self.sampler.batches = [(batch, torch_batch_seed(plan.seed, epoch, plan.rank, plan.world_size, k))
                                for k, batch in enumerate(self.plan.batches(epoch, start), start)]
        if not self.sampler.batches:
            return
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True).to(self.output_dtype)
            yield images.contiguous(memory_format=torch.channels_last), labels.to(self.device, non_blocking=True)
