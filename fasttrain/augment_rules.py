"""Range and cross-field rules of the strong-augmentation keys of [data] (policies, erasing, progressive resizing)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from fasttrain.config import DataConfig

POLICY_NAMES = ("randaugment", "trivialaugment")


def policy_backend_problem(augment: str, backend: str) -> str:
    """Why `augment` cannot run in `backend` ("" when it can): the torch backend has no batched policies."""
    if backend == "torch" and augment in POLICY_NAMES:
        return (f'data.augment = "{augment}" runs in the dali and reference backends only, not torch; '
                'set data.backend = "dali" (DALI\'s auto_aug, GPU or CPU) or "reference"')
    return ""


def validate_augmentation(d: DataConfig, epochs: int, model: str, need: Callable[[bool, str, str], None]) -> None:
    """Range rules of the policy, erasing and progressive-resizing keys of [data]."""
    need(1 <= d.randaugment_n <= 14, "data.randaugment_n", f"must be 1..14 (RandAugment has 14 operations), got {d.randaugment_n}")
    need(0 <= d.randaugment_m <= 30, "data.randaugment_m", f"must be a magnitude bin 0..30, got {d.randaugment_m}")
    problem = policy_backend_problem(d.augment, d.backend)
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
