"""Train augmentation, in one place: the modes and their parameters, which backend runs which, the random streams,
and the host-drawn crop windows, erase boxes and progressive sizes that every backend only executes.

Torch-free (numpy only), so the config's validation can ask it without importing torch.
Adding a mode: an entry in MODES (its crop, whether a policy follows, the backends that run it), its
parameters and rules here, and its operations in each backend that runs it (dali_pipeline._graph,
reference_pipeline.study_transform; the torch kernel executes any host-drawn window).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Callable

import numpy as np

from fasttrain.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from fasttrain.config import DataConfig

BACKENDS = ("dali", "torch", "reference")


@dataclass(frozen=True)
class Mode:
    """One value of data.augment: the crop it starts with, whether an operation policy follows the crop and
    flip, and the backends that run it."""

    crop: str
    policy: bool
    backends: tuple[str, ...]


# In data.augment's documented order (the config's error lists them so).
MODES: dict[str, Mode] = {
    "rrc": Mode(crop="rrc", policy=False, backends=BACKENDS),
    "pad_crop": Mode(crop="pad_crop", policy=False, backends=BACKENDS),
    "none": Mode(crop="none", policy=False, backends=BACKENDS),
    # RandomResizedCrop + flip, then the policy (the usual RandAugment/TrivialAugment recipe); the torch
    # backend has no batched policies.
    "randaugment": Mode(crop="rrc", policy=True, backends=("dali", "reference")),
    "trivialaugment": Mode(crop="rrc", policy=True, backends=("dali", "reference")),
}
POLICY_MODES = tuple(name for name, mode in MODES.items() if mode.policy)
# What each backend uses for a policy, named in the error that sends a user to it.
POLICY_ENGINES = {"dali": "DALI's auto_aug, GPU or CPU"}

# Policy parameters. torchvision's translation ranges, so the dali and reference backends draw the same
# shifts: RandAugment shifts up to 150/331 of the image side, TrivialAugmentWide up to 32 pixels.
RANDAUGMENT_OPERATIONS = 14
RANDAUGMENT_MAGNITUDE_BINS = 31
RANDAUGMENT_MAX_TRANSLATE_REL = 150.0 / 331.0
TRIVIALAUGMENT_MAX_TRANSLATE_PX = 32
# torchvision fills the area uncovered by shear/rotate/translate with 0 (DALI's default would be 128).
POLICY_FILL_VALUE = 0

# torchvision.transforms.RandomErasing's defaults: erased area share, aspect range, fill 0 (the mean pixel,
# since erasing follows normalization), up to 10 draws per sample.
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10
# Backends whose per-sample transform erases (torchvision's RandomErasing, the parity baseline); the
# others erase whole batches on the device after the backend made them.
ERASES_PER_SAMPLE = ("reference",)


def backend_problem(augment: str, backend: str) -> str:
    """Why `augment` cannot run in `backend` ("" when it can), naming the backends that can."""
    runs_in = MODES[augment].backends
    if backend in runs_in:
        return ""
    choices = " or ".join(f'"{b}"' + (f" ({POLICY_ENGINES[b]})" if MODES[augment].policy and b in POLICY_ENGINES else "")
                          for b in runs_in)
    return (f'data.augment = "{augment}" runs in the {" and ".join(runs_in)} backends only, not {backend}; '
            f"set data.backend = {choices}")


def check_backend(augment: str, backend: str) -> None:
    """A mode the backend cannot run is an error, not a run without it (data.backend = "auto" may resolve to torch)."""
    problem = backend_problem(augment, backend)
    if problem:
        raise UserError(problem)


def device_erasing(cfg: DataConfig, backend: str) -> float:
    """The erasing probability applied to finished batches on the device (0 where the backend erases per sample)."""
    return 0.0 if backend in ERASES_PER_SAMPLE else cfg.erasing


def needs_batch_ops(cfg: DataConfig, backend: str, train: bool) -> bool:
    """Whether finished train batches are erased and/or resized on the device after the backend."""
    return train and (device_erasing(cfg, backend) > 0 or cfg.progressive_start_size > 0)


def validate_augmentation(d: DataConfig, epochs: int, model: str, need: Callable[[bool, str, str], None]) -> None:
    """The config's rules for data.augment, the policy, erasing and progressive-resizing keys of [data]."""
    names = list(MODES)
    hint = "" if d.augment in MODES else did_you_mean(str(d.augment), names)
    need(d.augment in MODES, "data.augment",
         f"must be one of {', '.join(repr(n) for n in names)}, got {d.augment!r}; {hint}".rstrip("; "))
    need(1 <= d.randaugment_n <= RANDAUGMENT_OPERATIONS, "data.randaugment_n",
         f"must be 1..{RANDAUGMENT_OPERATIONS} (RandAugment has {RANDAUGMENT_OPERATIONS} operations), got {d.randaugment_n}")
    need(0 <= d.randaugment_m < RANDAUGMENT_MAGNITUDE_BINS, "data.randaugment_m",
         f"must be a magnitude bin 0..{RANDAUGMENT_MAGNITUDE_BINS - 1}, got {d.randaugment_m}")
    problem = backend_problem(d.augment, d.backend) if d.backend in BACKENDS else ""
    need(not problem, "data.augment", problem.split("data.augment ", 1)[-1])
    need(0.0 <= d.erasing <= 1.0, "data.erasing", f"must be a probability in [0, 1] (0 = off), got {d.erasing}")
    if d.progressive_start_size == 0:
        return
    step, start, size = d.progressive_step, d.progressive_start_size, d.image_size
    need(not model.startswith("t2t"), "data.progressive_start_size",
         f"must be 0 for {model}: a T2T-ViT has a fixed token grid (its position embedding), so it cannot train at other sizes")
    need(step >= 1, "data.progressive_step", f"must be at least 1, got {step}")
    need(8 <= start < size, "data.progressive_start_size", f"must be 0 (off) or 8 <= size < data.image_size ({size}), got {start}")
    need(start % step == 0, "data.progressive_start_size", f"({start}) must be a multiple of data.progressive_step ({step})")
    need(d.progressive_start_epoch >= 0, "data.progressive_start_epoch", f"must be >= 0, got {d.progressive_start_epoch}")
    need(d.progressive_start_epoch < d.progressive_end_epoch <= epochs, "data.progressive_end_epoch",
         f"must be after data.progressive_start_epoch ({d.progressive_start_epoch}) and at most train.epochs ({epochs}), "
         f"got {d.progressive_end_epoch}")


# ---- random streams ------------------------------------------------------------------------------------------


class Purpose(IntEnum):
    """One seed domain per purpose, so no two purposes share a random stream. The values are part of every
    run's randomness: changing one changes every batch (and breaks resuming older runs exactly)."""

    PERMUTATION = 0x5045524D  # the epoch's train order, shared by all ranks (no rank, no batch)
    CROP = 0x42415443  # crop windows and flips of one batch (dali, torch)
    SAMPLE = 0x53414D50  # the torch seed of one batch of per-sample transforms (reference)
    ERASE = 0x45524153  # erase boxes of one batch (dali, torch)
    POLICY = 0x41555447  # DALI's seed for one pass over an epoch on one rank (no batch)


_UINT64 = (1 << 64) - 1


def seed_sequence(seed: int, epoch: int, rank: int | None, world: int | None, batch: int | None,
                  purpose: Purpose) -> np.random.SeedSequence:
    """The one derivation of every random stream: a pure function of (seed, epoch, rank, world, batch, purpose),
    which is what makes a mid-epoch resume exact. `rank`/`world` are None for the all-ranks permutation,
    `batch` None for a per-pass stream."""
    words = [seed, epoch]
    if rank is not None:
        words += [world, rank]
    if batch is not None:
        words.append(batch)
    return np.random.SeedSequence([int(v) & _UINT64 for v in (*words, int(purpose))])


def batch_rng(seed: int, epoch: int, rank: int | None, world: int | None, batch: int | None,
              purpose: Purpose) -> np.random.Generator:
    """A numpy generator on the stream of `purpose` (see seed_sequence)."""
    return np.random.default_rng(seed_sequence(seed, epoch, rank, world, batch, purpose))


def torch_batch_seed(seed: int, epoch: int, rank: int, world: int, batch: int) -> int:
    """A 63-bit torch seed for one batch of per-sample transforms (the reference backend seeds torch once per
    batch, as cheap as a plain DataLoader, and still a pure function of (seed, epoch, rank, batch))."""
    words = seed_sequence(seed, epoch, rank, world, batch, Purpose.SAMPLE).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def policy_pass_seed(seed: int, epoch: int, rank: int, world: int) -> int:
    """DALI's seed for one pass over an epoch on one rank (a 31-bit int, as DALI takes)."""
    return int(seed_sequence(seed, epoch, rank, world, None, Purpose.POLICY).generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


# ---- crop windows and flips ----------------------------------------------------------------------------------


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
    """One batch of crop windows and flips for a mode's crop: "rrc", "pad_crop" or "none" (full image, no flip)."""
    crop = MODES[augment].crop
    if crop == "rrc":
        top, left, height, width = sample_resized_crop_boxes(rng, count, image_height, image_width, scale, ratio)
        flip = rng.random(count) < hflip
        return CropParams(top, left, height, width, flip)
    if crop == "pad_crop":
        top = rng.integers(0, image_height + 2 * pad - output_size + 1, count) - pad
        left = rng.integers(0, image_width + 2 * pad - output_size + 1, count) - pad
        size = np.full(count, output_size, dtype=np.int64)
        flip = rng.random(count) < hflip
        return CropParams(top.astype(np.int64), left.astype(np.int64), size, size.copy(), flip, pad)
    zeros = np.zeros(count, dtype=np.int64)
    return CropParams(
        zeros, zeros.copy(), np.full(count, image_height, np.int64), np.full(count, image_width, np.int64),
        np.zeros(count, dtype=bool),
    )


def batch_crops(cfg: DataConfig, augment: str, seed: int, epoch: int, rank: int, world: int, batch: int,
                count: int, image_height: int, image_width: int) -> CropParams:
    """The crop windows and flips of one batch of one rank, from its own stream (what dali and torch execute)."""
    return sample_crop_params(
        batch_rng(seed, epoch, rank, world, batch, Purpose.CROP), count, image_height, image_width, augment=augment,
        output_size=cfg.image_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, pad=cfg.pad, hflip=cfg.hflip,
    )


# ---- random erasing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EraseBoxes:
    """Per-sample boxes (top, left, height, width); height 0 means that sample is left as it is."""

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray


def batch_erase_boxes(cfg: DataConfig, backend: str, seed: int, epoch: int, rank: int, world: int, batch: int,
                      count: int, height: int, width: int) -> EraseBoxes:
    """The erase boxes of one finished batch of one rank, from its own stream (what batch_ops executes)."""
    return sample_erase_boxes(batch_rng(seed, epoch, rank, world, batch, Purpose.ERASE), count, height, width,
                              device_erasing(cfg, backend))


def sample_erase_boxes(rng: np.random.Generator, count: int, height: int, width: int, probability: float) -> EraseBoxes:
    """torchvision's RandomErasing rule, vectorised: erase with `probability`; up to 10 draws of area share
    ~ U(scale) and log-aspect ~ U(log ratio), the first box strictly inside the image wins, else no erase."""
    erase = rng.random(count) < probability
    area = height * width * rng.uniform(ERASE_SCALE[0], ERASE_SCALE[1], (count, ERASE_ATTEMPTS))
    aspect = np.exp(rng.uniform(np.log(ERASE_RATIO[0]), np.log(ERASE_RATIO[1]), (count, ERASE_ATTEMPTS)))
    box_h = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    box_w = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (box_h < height) & (box_w < width)
    first = fits.argmax(axis=1)
    rows = np.arange(count)
    keep = erase & fits.any(axis=1)
    box_h = np.where(keep, box_h[rows, first], 0)
    box_w = np.where(keep, box_w[rows, first], 0)
    u = rng.random((2, count))
    top = np.floor(u[0] * (height - box_h + 1)).astype(np.int64)
    left = np.floor(u[1] * (width - box_w + 1)).astype(np.int64)
    return EraseBoxes(top, left, box_h, box_w)


# ---- progressive resizing ------------------------------------------------------------------------------------


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
