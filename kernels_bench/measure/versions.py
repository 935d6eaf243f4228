"""Versions of what a benchmark figure depends on: torch, torchvision, DALI, CUDA, the GPU."""

from __future__ import annotations

import platform


def software_versions(device: str) -> dict:
    """torch/torchvision/DALI/CUDA versions and, on CUDA, the GPU's name (DALI: None when not importable)."""
    import torch
    import torchvision

    from fasttrain.data.pipelines.backend_choice import dali_importable

    dali = None
    if dali_importable():
        import nvidia.dali

        dali = nvidia.dali.__version__
    found = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
             "dali": dali, "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        found["gpu"] = torch.cuda.get_device_name()
        found["cudnn"] = torch.backends.cudnn.version()
    return found
