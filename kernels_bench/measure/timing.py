"""Timing discipline shared by the suites: warm-up first, CUDA events on a GPU, the median of repeats."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    """Wall time of the warm-up calls (compilation, autotuning, allocator growth land here)."""
    seconds: list[float]
    """Seconds per call of each timed repeat."""

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats: how steady the figure is on a busy machine."""
        return (max(self.seconds) - min(self.seconds)) / self.median_s if self.median_s > 0 else 0.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device | str, *, warmup: int, repeats: int,
               calls_per_repeat: int = 1) -> Timing:
    """Run `fn` `warmup` times untimed, then `repeats` × `calls_per_repeat` times timed.

    On CUDA each repeat is bracketed by events, so only device time between them counts and no
    host sync happens inside a repeat; on CPU the wall clock is read around each repeat.
    """
    device = torch.device(device)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(calls_per_repeat):
                fn()
            end.record()
            end.synchronize()
            seconds.append(begin.elapsed_time(end) / 1000 / calls_per_repeat)
        else:
            begin_s = time.perf_counter()
            for _ in range(calls_per_repeat):
                fn()
            seconds.append((time.perf_counter() - begin_s) / calls_per_repeat)
    return Timing(warmup_s, seconds)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS so far (it never goes down,
    so on CPU a case's figure also covers every case before it)."""
    from fasttrain.engine.metrics import peak_memory_mb as trainer_peak

    return round(trainer_peak(device), 1)


def load_average() -> float:
    import os

    return round(os.getloadavg()[0], 2)


def apply_backend_settings(device: torch.device) -> None:
    """The backend flags (TF32, cudnn.benchmark) the Trainer sets with its default [train] values: every side of a
    comparison runs under them, so a model-only figure is not timed under other settings."""
    from fasttrain.config import TrainConfig
    from fasttrain.engine.runtime import configure_backends

    configure_backends(TrainConfig(), torch.device(device))
