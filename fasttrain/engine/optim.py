"""The optimisation of a run: batch sizes per rank and step counts (the one batch/step rule), the scaled lr,
optimizers (sgd, adam, adamw) with no-decay groups, and per-step lr schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fasttrain.config import Config, ConfigError, OptimConfig, SchedConfig
from fasttrain.data.pipelines.sampling import whole_batches
from fasttrain.models.layers import no_weight_decay_of


@dataclass(frozen=True)
class BatchSizes:
    """Values computed from the config, the world size and the train split; kept apart from the config itself."""

    world_size: int
    per_rank_batch: int
    micro_batch: int
    """Per-rank batch of one forward/backward (per_rank_batch / grad_accum)."""
    steps_per_epoch: int
    total_steps: int
    lr: float
    """The base learning rate after linear batch scaling."""


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


def batch_sizes(cfg: Config, *, world_size: int, train_size: int, where: str = "config") -> BatchSizes:
    """The run's batch sizes and step counts; errors when the batch does not divide or leaves no step per epoch."""
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
    return BatchSizes(world_size, per_rank, micro, steps, total, lr)


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Weight decay on every parameter but those the model's no_weight_decay() names (norms, biases), unless asked."""
    skipped = set() if decay_norm_and_bias else no_weight_decay_of(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in skipped:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        # Adam's own weight_decay is L2 added to the gradient (the study's setting), not decoupled.
        return torch.optim.Adam(groups, lr=lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)


def lr_factor(cfg: SchedConfig, step: int, steps_per_epoch: int, total_steps: int, base_lr: float) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based); warm-up is linear from warmup_start_factor."""
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup_steps
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if cfg.name == "linear":  # reaches min_lr at the last step (step total_steps - 1)
        return floor + (1.0 - floor) * max(0.0, 1.0 - (step - warmup_steps) / max(1, span - 1))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(cfg: SchedConfig, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int,
                    total_steps: int, base_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step LambdaLR; its state is the step count, so it resumes exactly."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, total_steps, base_lr)
    )
