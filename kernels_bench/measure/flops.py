"""FLOPs of one training step (counted by FlopCounterMode on the meta device) and the measured bf16 matmul peak, for MFU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fasttrain.models import create_model


def train_flops_per_image(model_name: str, knobs: dict, *, num_classes: int, image_size: int) -> float:
    """Forward + backward FLOPs (2 per multiply-add) for one image; shapes only, nothing is computed."""
    with torch.device("meta"):
        model = create_model(model_name, num_classes, **knobs)
        images = torch.zeros(2, 3, image_size, image_size)
        labels = torch.zeros(2, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / 2


def bf16_matmul_peak_flops(device: torch.device, *, size: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of a large bf16 matmul on this GPU, measured now: the denominator of MFU
    (a datasheet figure assumes clocks and cooling this machine may not have)."""
    from kernels_bench.measure.timing import time_calls

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    timing = time_calls(lambda: torch.mm(a, b), device, warmup=3, repeats=repeats, calls_per_repeat=5)
    return 2 * size**3 / min(timing.seconds)  # the best repeat: a peak, not a typical figure
