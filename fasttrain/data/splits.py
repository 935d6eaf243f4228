"""Deterministic stratified train/val split of a source's training images."""

from __future__ import annotations

import numpy as np

from fasttrain.errors import UserError


def check_val_ratio(val_ratio: float) -> float:
    """val_ratio must be in [0, 1): 0 means no val split, 1 would leave nothing to train on."""
    try:
        ratio = float(val_ratio)
    except (TypeError, ValueError):
        raise UserError(f"val_ratio must be a number in [0, 1), got {val_ratio!r}") from None
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"val_ratio must be in [0, 1) (e.g. 0.2), got {val_ratio}")
    return ratio


def stratified_split(labels: np.ndarray, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_indices, val_indices) into `labels`, taking round(n * val_ratio) of each class for val.

    Each class is shuffled by its own generator seeded with (seed, class), so a class's split
    depends only on (seed, val_ratio) and that class's own images. Every class with at least one
    image keeps at least one training image.
    """
    val_ratio = check_val_ratio(val_ratio)
    labels = np.asarray(labels)
    val_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_val = min(int(round(len(members) * val_ratio)), len(members) - 1)
        if n_val <= 0:
            continue
        rng = np.random.default_rng([int(seed), int(label)])
        val_parts.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.empty(0, dtype=np.int64)
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val] = True
    return np.flatnonzero(~is_val).astype(np.int64), val.astype(np.int64)
