"""Automatic augmentation policies (RandAugment, TrivialAugmentWide): DALI's auto_aug graph, torchvision's transforms, backend rules."""

from __future__ import annotations

import numpy as np

from fasttrain.augment_rules import POLICY_NAMES, policy_backend_problem
from fasttrain.config import DataConfig
from fasttrain.errors import UserError

POLICIES = POLICY_NAMES

# torchvision's translation ranges, so the dali and reference backends draw the same shifts:
# RandAugment shifts up to 150/331 of the image side, TrivialAugmentWide up to 32 pixels.
RANDAUGMENT_MAX_TRANSLATE_REL = 150.0 / 331.0
TRIVIALAUGMENT_MAX_TRANSLATE_PX = 32
# torchvision fills the area uncovered by shear/rotate/translate with 0 (DALI's default would be 128).
FILL_VALUE = 0
_POLICY_SEED_DOMAIN = 0x41555447


def is_policy(augment: str) -> bool:
    return augment in POLICIES


def crop_mode(augment: str) -> str:
    """The crop before a policy: RandomResizedCrop + flip (the usual RandAugment/TrivialAugment recipe)."""
    return "rrc" if is_policy(augment) else augment


def check_policy_backend(cfg: DataConfig, backend: str) -> None:
    """The torch backend has no batched RandAugment/TrivialAugment: say so instead of training without it."""
    problem = policy_backend_problem(cfg.augment, backend)
    if problem:  # data.backend = "auto" resolved to torch (on CUDA)
        raise UserError(problem)


def pass_seed(seed: int, epoch: int, rank: int, world_size: int) -> int:
    """DALI's seed for one pass over an epoch on one rank (a 31-bit int, as DALI takes)."""
    words = [int(v) & ((1 << 64) - 1) for v in (seed, epoch, world_size, rank, _POLICY_SEED_DOMAIN)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


def dali_policy(cfg: DataConfig, images, size: int):
    """The policy as DALI operators on a batch of size x size HWC uint8 images (inside a pipeline
    built with enable_conditionals=True). Its randomness comes from the pipeline's seed."""
    from nvidia.dali.auto_aug import rand_augment, trivial_augment

    if cfg.augment == "randaugment":
        return rand_augment.rand_augment(
            images, n=cfg.randaugment_n, m=cfg.randaugment_m, shape=[size, size],
            max_translate_rel=RANDAUGMENT_MAX_TRANSLATE_REL, fill_value=FILL_VALUE,
        )
    return trivial_augment.trivial_augment_wide(
        images, max_translate_abs=TRIVIALAUGMENT_MAX_TRANSLATE_PX, fill_value=FILL_VALUE,
    )



def torchvision_policy(cfg: DataConfig):
    """torchvision's own transform for the reference backend (on PIL images, after crop and flip)."""
    from torchvision import transforms

    if cfg.augment == "randaugment":
        return transforms.RandAugment(num_ops=cfg.randaugment_n, magnitude=cfg.randaugment_m)
    return transforms.TrivialAugmentWide()


def with_erasing(transform, cfg: DataConfig, train: bool):
    """The reference backend's transform followed by torchvision's RandomErasing (after Normalize) in training."""
    from torchvision import transforms

    if not train or cfg.erasing <= 0:
        return transform
    return transforms.Compose([transform, transforms.RandomErasing(p=cfg.erasing)])
