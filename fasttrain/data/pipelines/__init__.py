"""Input pipelines: one builder, three backends (dali, torch, reference) with identical sharding, resume and output format.

Importing the package stays torch-free (the config's validation asks `augment`); the backends load on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fasttrain.data.pipelines.augment import BACKENDS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fasttrain.config import DataConfig
    from fasttrain.data.pipelines.backend_choice import resolve_backend
    from fasttrain.data.pipelines.base import BatchPipeline

__all__ = ["BACKENDS", "BatchPipeline", "build_pipeline", "resolve_backend"]


def __getattr__(name: str):
    if name == "resolve_backend":
        from fasttrain.data.pipelines.backend_choice import resolve_backend

        return resolve_backend
    if name == "BatchPipeline":
        from fasttrain.data.pipelines.base import BatchPipeline

        return BatchPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from fasttrain.data.pipelines.augment import check_backend, needs_batch_ops
    from fasttrain.data.pipelines.backend_choice import resolve_backend
    from fasttrain.data.pipelines.batch_ops import TrainBatchOps

    if backend is None:
        backend, _ = resolve_backend(data_cfg.backend, device)
    if train:  # evaluation never augments, so any backend evaluates a policy-trained model
        check_backend(data_cfg.augment, backend)
    pipe = _backend_pipeline(backend, data_cfg, images, labels, train=train, batch_size=batch_size, rank=rank,
                             world_size=world_size, device=device, seed=seed)
    return TrainBatchOps(pipe, data_cfg) if needs_batch_ops(data_cfg, backend, train) else pipe


def _backend_pipeline(backend: str, data_cfg: DataConfig, images: np.ndarray, labels: np.ndarray, *, train: bool,
                      batch_size: int, rank: int, world_size: int, device: torch.device, seed: int) -> BatchPipeline:
    import torch

    kwargs = dict(train=train, batch_size=batch_size, rank=rank, world_size=world_size, device=torch.device(device), seed=seed)
    if backend == "torch":
        from fasttrain.data.pipelines.torch_pipeline import TorchPipeline

        return TorchPipeline(data_cfg, images, labels, **kwargs)
    if backend == "dali":
        from fasttrain.data.pipelines.dali_pipeline import DaliPipeline

        return DaliPipeline(data_cfg, images, labels, **kwargs)
    from fasttrain.data.pipelines.reference_pipeline import ReferencePipeline

    return ReferencePipeline(data_cfg, images, labels, **kwargs)
