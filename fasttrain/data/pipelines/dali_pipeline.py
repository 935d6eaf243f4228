"""The `dali` backend: NVIDIA DALI crop/resize/flip/normalize, on the GPU or in DALI's CPU-only mode."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from fasttrain.data.pipelines.base import BatchPipeline
from fasttrain.data.pipelines.sampling import sample_crop_params


class DaliPipeline(BatchPipeline):
    """One DALI graph per pass over an epoch: an `external_source` in batch mode hands DALI each
    planned batch (this rank's shard of the epoch permutation) together with host-sampled crop
    windows and flip flags, so no randomness comes from DALI's own RNG and resume is exact.

    On CUDA the images go to the GPU right after the source and every operator runs there; on CPU
    the graph runs with device_id=None and CPU operators. Outputs reach torch through DLPack
    without a copy (bfloat16 output is the exception: DALI has no bfloat16, so torch converts);
    treat a yielded batch as valid until the next one is requested.
    """

    backend = "dali"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from nvidia.dali import types  # imported here so the other backends work without DALI

        self._types = types
        self.on_gpu = self.device.type == "cuda"
        self.device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if self.on_gpu else None
        self.dali_dtype = types.FLOAT16 if self.output_dtype == torch.float16 else types.FLOAT
        self.threads = max(1, min(4, os.cpu_count() or 1)) if self.on_gpu else max(1, torch.get_num_threads())

    def _source(self, epoch: int, start: int):
        """The external_source callback: batch k of the plan plus its crop windows and flips."""
        plan = self.plan
        batches = iter(enumerate(plan.batches(epoch, start), start))
        height, width = self.images.shape[1:3]

        def next_batch():
            k, indices = next(batches)  # StopIteration ends the pass
            images = np.take(self.images, indices, axis=0)
            count = len(indices)
            if self.augment == "none":
                return (images,)
            params = sample_crop_params(
                plan.batch_rng(epoch, k), count, height, width, augment=self.augment, output_size=self.cfg.image_size,
                scale=self.cfg.crop_scale, ratio=self.cfg.crop_ratio, pad=self.cfg.pad, hflip=self.cfg.hflip,
            )
            anchors = np.stack([params.top, params.left], axis=1).astype(np.float32)
            shapes = np.stack([params.height, params.width], axis=1).astype(np.float32)
            return images, anchors, shapes, params.flip.astype(np.int32)

        return next_batch

    def _build(self, epoch: int, start: int):
        from nvidia.dali import fn
        from nvidia.dali.pipeline import Pipeline

        types = self._types
        scale = 255.0
        size = self.cfg.image_size
        pipe = Pipeline(
            batch_size=self.plan.batch_size, num_threads=self.threads, device_id=self.device_id,
            prefetch_queue_depth=2, py_start_method="spawn",
        )
        with pipe:
            if self.augment == "none":
                (images,) = fn.external_source(
                    source=self._source(epoch, start), num_outputs=1, batch=True, layout=["HWC"], dtype=[types.UINT8]
                )
                mirror = 0
            else:
                images, anchors, shapes, mirror = fn.external_source(
                    source=self._source(epoch, start), num_outputs=4, batch=True, layout=["HWC", "", "", ""],
                    dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32],
                )
            if self.on_gpu:
                images = images.gpu()
            if self.augment == "rrc":
                images = fn.resize(
                    images, size=[size, size], roi_start=anchors, roi_end=anchors + shapes, roi_relative=False,
                    interp_type=types.INTERP_LINEAR, antialias=False,
                )
            elif self.augment == "pad_crop":
                images = fn.slice(
                    images, anchors, shapes, axis_names="HW", normalized_anchor=False, normalized_shape=False,
                    out_of_bounds_policy="pad", fill_values=0,
                )
            images = fn.crop_mirror_normalize(
                images, mirror=mirror, mean=[m * scale for m in self.cfg.mean], std=[s * scale for s in self.cfg.std],
                dtype=self.dali_dtype, output_layout="HWC",
            )
            pipe.set_outputs(images)
        pipe.build()
        return pipe

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if start >= len(self):
            return
        # A fresh graph per pass costs tens of milliseconds and makes abandoning a pass midway
        # (a break, a resume, a new epoch) safe: nothing prefetched for the old plan survives.
        pipe = self._build(epoch, start)
        for indices in self.plan.batches(epoch, start):
            (images,) = pipe.run()
            nhwc = torch.from_dlpack(images.as_tensor())
            nchw = nhwc.permute(0, 3, 1, 2)  # NHWC memory is NCHW channels_last
            yield nchw.to(self.output_dtype), self._labels_on_device(indices)
