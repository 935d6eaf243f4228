"""The measured bf16 matmul peak of a GPU: the denominator of MFU (FLOP counts: fasttrain.models.counting)."""

from __future__ import annotations

import torch


def bf16_matmul_peak_flops(device: torch.device, *, size: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of a large bf16 matmul on this GPU, measured now: the denominator of MFU
    (a datasheet figure assumes clocks and cooling this machine may not have)."""
    from kernels_bench.measure.timing import time_calls

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    timing = time_calls(lambda: torch.mm(a, b), device, warmup=3, repeats=repeats, calls_per_repeat=5)
    return 2 * size**3 / min(timing.seconds)  # the best repeat: a peak, not a typical figure


def datasheet_peak(device: torch.device) -> dict | None:
    """{"name", "flops"}: the vendor's dense bf16 peak of the detected GPU (fasttrain.engine.metrics' table),
    or None (CPU, or a GPU the table lacks)."""
    from fasttrain.engine.metrics import device_peak_tflops

    tflops, name = device_peak_tflops(device)
    return {"name": name, "flops": tflops * 1e12} if tflops else None
