"""Random erasing as one batched device op, its boxes drawn on the host from the (seed, epoch, rank, batch) plan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# torchvision.transforms.RandomErasing's defaults: erased area share, aspect range, fill 0 (the
# mean pixel, since erasing follows normalization).
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
_ERASE_DOMAIN = 0x45524153
_ATTEMPTS = 10


def erasing_rng(seed: int, epoch: int, rank: int, world_size: int, batch: int) -> np.random.Generator:
    """The erasing stream of one batch of one rank, apart from the crop/flip stream of the same batch."""
    return np.random.default_rng([int(v) & ((1 << 64) - 1) for v in (seed, epoch, world_size, rank, batch, _ERASE_DOMAIN)])


@dataclass(frozen=True)
class EraseBoxes:
    """Per-sample boxes (top, left, height, width); height 0 means that sample is left as it is."""

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray


def sample_erase_boxes(rng: np.random.Generator, count: int, height: int, width: int, probability: float) -> EraseBoxes:
    """torchvision's RandomErasing rule, vectorised: erase with `probability`; up to 10 draws of area share
    ~ U(scale) and log-aspect ~ U(log ratio), the first box strictly inside the image wins, else no erase."""
    erase = rng.random(count) < probability
    area = height * width * rng.uniform(ERASE_SCALE[0], ERASE_SCALE[1], (count, _ATTEMPTS))
    aspect = np.exp(rng.uniform(np.log(ERASE_RATIO[0]), np.log(ERASE_RATIO[1]), (count, _ATTEMPTS)))
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


def erase(images: torch.Tensor, boxes: EraseBoxes) -> torch.Tensor:
    """Zero each sample's box in an NCHW batch (any memory format) in one masked fill on its device."""
    count, _, height, width = images.shape
    device = images.device
    as_column = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)[:, None]
    top, left = as_column(boxes.top), as_column(boxes.left)
    rows = torch.arange(height, device=device)[None]
    cols = torch.arange(width, device=device)[None]
    in_rows = (rows >= top) & (rows < top + as_column(boxes.height))
    in_cols = (cols >= left) & (cols < left + as_column(boxes.width))
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # N, 1, H, W
    return images.masked_fill(mask, 0)
