"""Which backend runs: the explicit choice checked, or "auto" resolved by device and what is installed."""

from __future__ import annotations

import torch

from fasttrain.data.pipelines.augment import BACKENDS
from fasttrain.errors import UserError

DALI_MISSING = (
    "DALI requested but not installed: pip install nvidia-dali-cuda130 (CUDA 13) or nvidia-dali-cuda120, "
    'or set data.backend = "torch"'
)


def dali_importable() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
    except Exception:  # a broken install (missing shared libraries) is as unusable as a missing one
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> tuple[str, str]:
    """(backend, reason). "auto": on CUDA the torch backend, which keeps the uint8 split on the GPU and needs
    no host work or copies per batch; elsewhere DALI's CPU mode when DALI imports, torch otherwise. Which is
    fastest on a given machine is what `python -m kernels_bench loader` measures there."""
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            return "torch", (
                "auto: torch backend on CUDA (uint8 split resident on the GPU, batched crop/flip/normalize, "
                "no host work or copies per batch)"
            )
        if dali_importable():
            return "dali", (
                f"auto: dali backend in CPU-only mode on {device.type} (auto's pick where DALI imports; not measured "
                "on this machine: `python -m kernels_bench loader` compares the backends here)"
            )
        return "torch", (f"auto: torch backend on {device.type} (DALI not installed; not measured on this machine: "
                         "`python -m kernels_bench loader` compares the backends here)")
    if name == "dali":
        if not dali_importable():
            raise UserError(DALI_MISSING)
        return "dali", f"data.backend = \"dali\" ({'GPU operators' if device.type == 'cuda' else 'DALI CPU-only mode'})"
    if name in BACKENDS:
        return name, f"data.backend = \"{name}\""
    raise UserError(f"unknown data.backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
