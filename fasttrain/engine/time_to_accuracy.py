"""Time to accuracy from a run's metrics.jsonl: training seconds to reach val top-1 levels, compile/warm-up apart.

How it is measured (the definitions the report and results.json state):
- The trainer's clock (`wall_time_s` of each epoch record) starts at the first training step; at an epoch's end it
  holds that epoch's training and the val evaluations and checkpoints of the epochs before it (what a user waits
  for), not the cache build, process start-up or the final test evaluation.
- Compile/warm-up seconds: the first log window's time less the same number of steps at the median speed of the
  other windows (a window's time is its steps × global batch / its images/s). A process's first window holds
  torch.compile, cuDNN autotuning and allocator warm-up; with fewer than two windows it is unknown (None).
- Seconds to a level: the clock at the end of the first epoch whose val top-1 reaches it, less the compile
  seconds; None when no epoch reached it.
"""

from __future__ import annotations

import statistics
from typing import Any

VAL_TOP1_LEVELS = (0.5, 0.8, 0.9, 0.95)


def _steps_per_epoch(records: list[dict[str, Any]]) -> int | None:
    for rec in records:
        if rec.get("kind") == "epoch" and rec.get("epoch") and rec.get("step"):
            return rec["step"] // rec["epoch"]
    return None


def window_seconds(records: list[dict[str, Any]], global_batch: int) -> list[tuple[int, float]]:
    """(steps, seconds) of each logged window, in order; a window starts at the previous log step or its epoch's start."""
    per_epoch = _steps_per_epoch(records)
    windows, previous = [], 0
    for rec in records:
        if rec.get("kind") != "step" or not rec.get("images_per_s"):
            continue
        start = previous
        if per_epoch and isinstance(rec.get("epoch"), int):
            start = max(start, rec["epoch"] * per_epoch)  # the trainer restarts the window clock at each epoch
        steps = rec["step"] - start
        if steps > 0:
            windows.append((steps, steps * global_batch / rec["images_per_s"]))
        previous = rec["step"]
    return windows


def compile_seconds(records: list[dict[str, Any]], global_batch: int) -> float | None:
    """The first window's excess over the median window speed (>= 0); None with fewer than two windows."""
    windows = window_seconds(records, global_batch)
    if len(windows) < 2:
        return None
    median_step_s = statistics.median(seconds / steps for steps, seconds in windows[1:])
    first_steps, first_seconds = windows[0]
    return max(0.0, first_seconds - first_steps * median_step_s)


def seconds_to_val_top1(records: list[dict[str, Any]], compile_s: float | None,
                        levels: tuple[float, ...] = VAL_TOP1_LEVELS) -> dict[str, float | None]:
    """Level (as text, e.g. "0.9") → training seconds to the first epoch end at or above it (None: not reached)."""
    epochs = sorted((r for r in records if r.get("kind") == "epoch" and r.get("val_top1") is not None
                     and r.get("wall_time_s") is not None), key=lambda r: r["epoch"])
    out = {}
    for level in levels:
        reached = next((r for r in epochs if r["val_top1"] >= level), None)
        out[f"{level:g}"] = None if reached is None else max(0.0, reached["wall_time_s"] - (compile_s or 0.0))
    return out


def training_clock(records: list[dict[str, Any]], global_batch: int) -> list[tuple[float, float]]:
    """(training seconds, val top-1) at each evaluated epoch end, compile seconds taken off (the time-to-accuracy curve)."""
    compile_s = compile_seconds(records, global_batch) or 0.0
    return [(max(0.0, r["wall_time_s"] - compile_s), r["val_top1"])
            for r in sorted((r for r in records if r.get("kind") == "epoch"), key=lambda r: r["epoch"])
            if r.get("val_top1") is not None and r.get("wall_time_s") is not None]


def time_to_accuracy(records: list[dict[str, Any]], global_batch: int) -> dict[str, Any]:
    """The results.json keys: compile_s and seconds_to_val_top1 (see the module docstring for the definitions)."""
    compile_s = compile_seconds(records, global_batch)
    return {"compile_s": compile_s, "seconds_to_val_top1": seconds_to_val_top1(records, compile_s)}
