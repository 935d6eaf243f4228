"""What the accelerator can do on paper: datasheet dense bf16 peaks by GPU name, and MFU against them."""

from __future__ import annotations

import torch

# Dense (no sparsity) bf16 tensor-core TFLOP/s with fp32 accumulation, from the vendors' datasheets.
# Checked in order: a longer name comes before a name it contains ("H100 PCIe" before "H100", "L40S" before "L40" before "L4").
DATASHEET_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),       # H200 SXM
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),       # H100 SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
)


def datasheet_peak_tflops(gpu_name: str) -> float | None:
    """Dense bf16 peak of a GPU named like torch.cuda.get_device_name (e.g. "NVIDIA H100 80GB HBM3"); None if unknown."""
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if key.lower() in gpu_name.lower():
            return tflops
    return None


def device_peak_tflops(device: torch.device) -> tuple[float | None, str]:
    """(dense bf16 peak of `device` or None, the device's name); CPUs have no datasheet peak here."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, device.type
    name = torch.cuda.get_device_name(device)
    return datasheet_peak_tflops(name), name


def mfu_pct(flops_per_image: float, images_per_s: float, peak_tflops: float, *, devices: int = 1) -> float:
    """Model FLOPs utilization in percent: achieved FLOP/s over `devices` × the peak."""
    return 100.0 * flops_per_image * images_per_s / (peak_tflops * 1e12 * devices)
