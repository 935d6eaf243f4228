"""The one batch/step rule: global batch → per-rank and micro batches, whole steps per epoch, total steps, scaled lr."""

from __future__ import annotations

from dataclasses import dataclass

from fasttrain.config import Config, ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """Values computed from the config, the world size and the train split; kept apart from the config itself."""

    world_size: int
    per_rank_batch: int
    micro_batch: int
    """Per-rank batch of one forward/backward (per_rank_batch / grad_accum)."""
    steps_per_epoch: int
    total_steps: int
    lr: float
    """The base learning rate after linear batch scaling."""


def whole_batches(num_items: int, global_batch: int) -> int:
    """Batches of `global_batch` items in `num_items`; the last partial one is dropped (fixed shapes)."""
    return num_items // global_batch


def split_batch(batch_size: int, world_size: int, grad_accum: int, *, where: str = "config") -> tuple[int, int]:
    """(per-rank batch, micro batch) of a global batch; a batch that does not divide is a ConfigError."""
    if batch_size % world_size:
        raise ConfigError(
            f"{where}: [train] batch_size {batch_size} is not divisible by the world size {world_size}; "
            f"use a multiple of {world_size} (it is the global batch)"
        )
    per_rank = batch_size // world_size
    if per_rank % grad_accum:
        raise ConfigError(
            f"{where}: [train] grad_accum {grad_accum} does not divide the per-rank batch {per_rank} "
            f"(batch_size {batch_size} / world size {world_size})"
        )
    return per_rank, per_rank // grad_accum


def plan_batches(cfg: Config, *, world_size: int, train_size: int, where: str = "config") -> BatchPlan:
    """The run's batch plan; errors when the batch does not divide or leaves no step per epoch."""
    t = cfg.train
    per_rank, micro = split_batch(t.batch_size, world_size, t.grad_accum, where=where)
    # Each rank's pipeline yields whole_batches(train_size, world_size * micro) micro-batches; grouped by
    # grad_accum that is the same count of whole global batches.
    steps = whole_batches(train_size, t.batch_size)
    if steps < 1:
        raise ConfigError(
            f"{where}: [train] batch_size {t.batch_size} is larger than the train split ({train_size} images); lower it"
        )
    total = steps * t.epochs
    if t.max_steps:
        total = min(total, t.max_steps)
    lr = cfg.optim.lr * (t.batch_size / cfg.optim.lr_reference_batch if cfg.optim.lr_reference_batch else 1.0)
    return BatchPlan(world_size, per_rank, micro, steps, total, lr)
