"""What each batch holds and how it is cropped: epoch permutation, rank shards, and host-sampled crop/flip parameters.

Every backend draws from here, so the same (seed, epoch) gives the same permutation on every rank
and every backend, and augmentation randomness is a pure function of (seed, epoch, rank, batch) —
which is what makes a mid-epoch resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# Separate seed domains so the permutation, the fast backends' batch parameters and the reference
# backend's per-sample seeds never share a random stream.
_PERMUTATION_DOMAIN = 0x5045524D
_BATCH_DOMAIN = 0x42415443
_SAMPLE_DOMAIN = 0x53414D50
_UINT64 = (1 << 64) - 1


def _seed_words(*values: int) -> list[int]:
    return [int(v) & _UINT64 for v in values]


def whole_batches(num_items: int, global_batch: int) -> int:
    """Batches of `global_batch` items in `num_items`; the last partial one is dropped (fixed shapes)."""
    return num_items // global_batch


def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The train order of one epoch; identical on every rank for the same (seed, epoch)."""
    rng = np.random.default_rng(_seed_words(seed, epoch, _PERMUTATION_DOMAIN))
    return rng.permutation(num_items)




class EpochPlan:
    """Which sample indices this rank sees, batch by batch, in a given epoch.

    Train: one permutation per (seed, epoch) shared by all ranks, cut to a multiple of
    world_size × batch_size (the last partial global batch is dropped), dealt round-robin so the
    ranks' k-th batches together are the k-th global batch whatever the world size.
    Eval: no shuffle; rank r takes r::world_size; the last batch may be smaller.
    """

    def __init__(self, num_items: int, *, train: bool, batch_size: int, rank: int, world_size: int, seed: int):
        self.num_items = num_items
        self.train = train
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        if train:
            self.num_batches = whole_batches(num_items, world_size * batch_size)
            self.num_samples = self.num_batches * batch_size
        else:
            self.num_samples = len(range(rank, num_items, world_size))
            self.num_batches = -(-self.num_samples // batch_size)

    def rank_indices(self, epoch: int) -> np.ndarray:
        if not self.train:
            return np.arange(self.rank, self.num_items, self.world_size, dtype=np.int64)
        used = self.num_samples * self.world_size
        return epoch_permutation(self.num_items, self.seed, epoch)[:used][self.rank :: self.world_size].astype(np.int64)

    def batches(self, epoch: int, start: int = 0) -> list[np.ndarray]:
        """Index arrays of batches start, start+1, … of this rank's epoch."""
        indices = self.rank_indices(epoch)
        b = self.batch_size
        return [indices[k * b : (k + 1) * b] for k in range(start, self.num_batches)]

    def batch_rng(self, epoch: int, batch: int) -> np.random.Generator:
        """The random stream of one batch of this rank (crop boxes, flips)."""
        return np.random.default_rng(_seed_words(self.seed, epoch, self.world_size, self.rank, batch, _BATCH_DOMAIN))

    def batch_seed(self, epoch: int, batch: int) -> int:
        """A 63-bit torch seed for one batch of this rank (the reference backend's transforms draw from it,
        sample after sample: one seeding per batch, as cheap as a plain DataLoader, and still a pure function
        of (seed, epoch, rank, batch) for an exact resume)."""
        words = np.random.SeedSequence(
            _seed_words(self.seed, epoch, self.world_size, self.rank, batch, _SAMPLE_DOMAIN)).generate_state(2, np.uint32)
        return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


@dataclass(frozen=True)
class CropParams:
    """Per-sample source windows and flips, in pixels of the stored image.

    A window may reach past the image by up to `pad` pixels (pad-and-crop); that area is zero.
    Output pixel (i, j) samples the window with half-pixel-centre bilinear interpolation.
    """

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    flip: np.ndarray
    pad: int = 0


def sample_resized_crop_boxes(
    rng: np.random.Generator,
    count: int,
    image_height: int,
    image_width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """RandomResizedCrop windows (top, left, height, width), vectorised with torchvision's rule:
    up to `attempts` draws of area fraction ~ U(scale) and log-aspect ~ U(log ratio), the first that
    fits wins; otherwise a centre crop with the aspect clamped into `ratio`."""
    area = image_height * image_width
    log_ratio = np.log(np.asarray(ratio, dtype=np.float64))
    target_area = area * rng.uniform(scale[0], scale[1], (count, attempts))
    aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1], (count, attempts)))
    widths = np.rint(np.sqrt(target_area * aspect)).astype(np.int64)
    heights = np.rint(np.sqrt(target_area / aspect)).astype(np.int64)
    fits = (widths > 0) & (widths <= image_width) & (heights > 0) & (heights <= image_height)
    first = fits.argmax(axis=1)
    rows = np.arange(count)
    height, width = heights[rows, first], widths[rows, first]

    in_ratio = image_width / image_height
    if in_ratio < ratio[0]:
        fb_w, fb_h = image_width, int(round(image_width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_h, fb_w = image_height, int(round(image_height * ratio[1]))
    else:
        fb_w, fb_h = image_width, image_height
    found = fits.any(axis=1)
    height = np.where(found, height, fb_h)
    width = np.where(found, width, fb_w)
    u = rng.random((2, count))
    top = np.where(found, np.floor(u[0] * (image_height - height + 1)).astype(np.int64), (image_height - fb_h) // 2)
    left = np.where(found, np.floor(u[1] * (image_width - width + 1)).astype(np.int64), (image_width - fb_w) // 2)
    return top, left, height, width


def sample_crop_params(
    rng: np.random.Generator,
    count: int,
    image_height: int,
    image_width: int,
    *,
    augment: str,
    output_size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    pad: int,
    hflip: float,
) -> CropParams:
    """One batch of crop windows and flips for augment "rrc", "pad_crop" or "none" (full image, no flip)."""
    if augment == "rrc":
        top, left, height, width = sample_resized_crop_boxes(rng, count, image_height, image_width, scale, ratio)
        flip = rng.random(count) < hflip
        return CropParams(top, left, height, width, flip)
    if augment == "pad_crop":
        top = rng.integers(0, image_height + 2 * pad - output_size + 1, count) - pad
        left = rng.integers(0, image_width + 2 * pad - output_size + 1, count) - pad
        size = np.full(count, output_size, dtype=np.int64)
        flip = rng.random(count) < hflip
        return CropParams(top.astype(np.int64), left.astype(np.int64), size, size.copy(), flip, pad)
    if augment == "none":
        zeros = np.zeros(count, dtype=np.int64)
        return CropParams(
            zeros, zeros.copy(), np.full(count, image_height, np.int64), np.full(count, image_width, np.int64),
            np.zeros(count, dtype=bool),
        )
    raise ValueError(f"unknown augment {augment!r}")  # the config schema only admits the three above
