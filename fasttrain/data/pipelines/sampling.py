"""What each batch holds: the epoch permutation and the rank shards, batch by batch.

Every backend draws from here, so the same (seed, epoch) gives the same permutation on every rank
and every backend; how each batch is augmented (from its own random stream) is augment.py's.
"""

from __future__ import annotations

import numpy as np

from fasttrain.data.pipelines.augment import Purpose, batch_rng


def whole_batches(num_items: int, global_batch: int) -> int:
    """Batches of `global_batch` items in `num_items`; the last partial one is dropped (fixed shapes)."""
    return num_items // global_batch


def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The train order of one epoch; identical on every rank for the same (seed, epoch)."""
    rng = batch_rng(seed, epoch, None, None, None, Purpose.PERMUTATION)
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
