"""Numerics of a run: what `train.amp` means on the device at hand, its autocast, and the TF32/cuDNN/determinism switches."""

from __future__ import annotations

import torch

from fasttrain.config import TrainConfig

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """oneDNN has native bf16 kernels (AVX512-BF16/AMX); without them bf16 autocast is emulated, 7-14× slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_amp(requested: str, device: torch.device) -> str:
    """"auto": bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16, else off."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "off"


def autocast(amp: str, device: torch.device):
    """The autocast context of a resolved amp setting ("bf16", "fp16" or "off")."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp != "off")


def configure_backends(train: TrainConfig, device: torch.device) -> None:
    """TF32, cuDNN autotuning and deterministic algorithms as [train] asks; benchmarks call it too, so both
    sides of a comparison run under the same settings."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = train.tf32
        torch.backends.cudnn.allow_tf32 = train.tf32
        torch.backends.cudnn.benchmark = not train.deterministic
    if train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
