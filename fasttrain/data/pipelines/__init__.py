"""Input pipelines: one builder, three backends (dali, torch, reference) with identical sharding, resume and output format."""

from __future__ import annotations

import numpy as np
import torch

from fasttrain.config import DataConfig
from fasttrain.data.pipelines.backend_choice import BACKENDS, resolve_backend
from fasttrain.data.pipelines.base import BatchPipeline

__all__ = ["BACKENDS", "BatchPipeline", "build_pipeline", "resolve_backend"]


def build_pipeline(
    data_cfg: DataConfig,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    train: bool,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device,
    seed: int = 0,
    backend: str | None = None,
) -> BatchPipeline:
    """An iterable of (images, labels) on `device` for this rank; `batch_size` is per rank.

    Images: float (data.output_dtype), NCHW channels_last, normalized; labels int64. The returned
    object has len() (batches per epoch), num_samples, backend, set_epoch, state_dict, load_state_dict.
    `backend` is a name resolve_backend already returned (the Trainer resolves once per run); None resolves
    data_cfg.backend here.
    """
    if backend is None:
        backend, _ = resolve_backend(data_cfg.backend, device)
    kwargs = dict(train=train, batch_size=batch_size, rank=rank, world_size=world_size, device=torch.device(device), seed=seed)
    if backend == "torch":
        from fasttrain.data.pipelines.torch_pipeline import TorchPipeline

        return TorchPipeline(data_cfg, images, labels, **kwargs)
    if backend == "dali":
        from fasttrain.data.pipelines.dali_pipeline import DaliPipeline

        return DaliPipeline(data_cfg, images, labels, **kwargs)
    from fasttrain.data.pipelines.reference_pipeline import ReferencePipeline

    return ReferencePipeline(data_cfg, images, labels, **kwargs)
