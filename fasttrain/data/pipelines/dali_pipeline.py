"""The `dali` backend: NVIDIA DALI crop/resize/flip/normalize, on the GPU or in DALI's CPU-only mode."""

from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np
import torch

from nvidia.dali.pipeline import pipeline_def

from fasttrain.data.pipelines.augment import (
    MODES, POLICY_FILL_VALUE, RANDAUGMENT_MAGNITUDE_BINS, RANDAUGMENT_MAX_TRANSLATE_REL, TRIVIALAUGMENT_MAX_TRANSLATE_PX,
    batch_crops, policy_pass_seed,
)
from fasttrain.data.pipelines.base import BatchPipeline


class DaliPipeline(BatchPipeline):
    """One DALI graph per pass over an epoch: an `external_source` in batch mode hands DALI each
    planned batch (this rank's shard of the epoch permutation) together with host-sampled crop
    windows and flip flags. The one exception is an augmentation policy (RandAugment, TrivialAugmentWide
    from nvidia.dali.auto_aug), whose operator choice and magnitudes come from DALI's RNG seeded per
    pass from (seed, epoch, rank); a mid-epoch resume replays the pass up to its batch (see _batches),
    so resume stays exact at the cost of redoing that part of the epoch's augmentation once.

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
            if MODES[self.augment].crop == "none":
                return (images,)
            params = batch_crops(self.cfg, self.augment, plan.seed, epoch, plan.rank, plan.world_size, k, count, height, width)
            anchors = np.stack([params.top, params.left], axis=1).astype(np.float32)
            shapes = np.stack([params.height, params.width], axis=1).astype(np.float32)
            return images, anchors, shapes, params.flip.astype(np.int32)

        return next_batch

    def _build(self, epoch: int, start: int):
        policy_seed = None
        if MODES[self.augment].policy:
            policy_seed = policy_pass_seed(self.plan.seed, epoch, self.plan.rank, self.plan.world_size)
        pipe = _graph(
            self, self._source(epoch, start), batch_size=self.plan.batch_size, num_threads=self.threads,
            device_id=self.device_id, prefetch_queue_depth=2, py_start_method="spawn", seed=policy_seed,
        )
        pipe.build()
        return pipe

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if start >= len(self):
            return
        # A fresh graph per pass costs tens of milliseconds and makes abandoning a pass midway
        # (a break, a resume, a new epoch) safe: nothing prefetched for the old plan survives.
        # A policy's randomness is DALI's own RNG, seeded per (seed, epoch, rank) pass; its state after
        # k batches depends only on how many samples it has drawn, so a resume at batch `start` replays
        # batches 0..start-1 through the graph and drops them, and batch `start` is then bit-identical.
        replay = start if MODES[self.augment].policy else 0
        pipe = self._build(epoch, start - replay)
        if replay:
            logging.getLogger(__name__).info(
                f"dali: replaying {replay} batches of epoch {epoch + 1} through the {self.augment} graph so the resumed "
                "batches draw exactly the operations of an uninterrupted run"
            )
        # On CUDA the outputs are bound to torch's current stream (DALI makes that stream wait for them) instead of
        # the host waiting for each batch, so the host runs ahead while the GPU works; on CPU run() is host-synchronous.
        stream = (torch.cuda.current_stream(self.device),) if self.on_gpu else ()
        for _ in range(replay):
            pipe.run(*stream)
        for indices in self.plan.batches(epoch, start):
            (images,) = pipe.run(*stream)
            nhwc = torch.from_dlpack(images.as_tensor())
            nchw = nhwc.permute(0, 3, 1, 2)  # NHWC memory is NCHW channels_last
            yield nchw.to(self.output_dtype), self._labels_on_device(indices)


@pipeline_def(enable_conditionals=True)  # auto_aug picks operations per sample with DALI conditionals
def _graph(owner: DaliPipeline, source):
    """Source → (crop/resize | pad-crop) → policy → flip + normalize, for DaliPipeline `owner`."""
    from nvidia.dali import fn, types

    size, crop = owner.cfg.image_size, MODES[owner.augment].crop
    if crop == "none":
        (images,) = fn.external_source(source=source, num_outputs=1, batch=True, layout=["HWC"], dtype=[types.UINT8])
        mirror = 0
    else:
        images, anchors, shapes, mirror = fn.external_source(
            source=source, num_outputs=4, batch=True, layout=["HWC", "", "", ""],
            dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32],
        )
    if owner.on_gpu:
        images = images.gpu()
    if crop == "pad_crop":
        images = fn.slice(
            images, anchors, shapes, axis_names="HW", normalized_anchor=False, normalized_shape=False,
            out_of_bounds_policy="pad", fill_values=0,
        )
    elif crop == "rrc":
        images = fn.resize(
            images, size=[size, size], roi_start=anchors, roi_end=anchors + shapes, roi_relative=False,
            interp_type=types.INTERP_LINEAR, antialias=False,
        )
    if MODES[owner.augment].policy:
        images = _policy(owner.cfg, owner.augment, images, size)
    return fn.crop_mirror_normalize(
        images, mirror=mirror, mean=[m * 255.0 for m in owner.cfg.mean], std=[s * 255.0 for s in owner.cfg.std],
        dtype=owner.dali_dtype, output_layout="HWC",
    )


def _policy(cfg, augment: str, images, size: int):
    """The policy as DALI auto_aug operators on a batch of size x size HWC uint8 images (inside a pipeline built
    with enable_conditionals=True); its randomness comes from the pipeline's seed. auto_aug's own suites, with
    their sharpness and equalize rebuilt on the non-experimental operators (auto_aug still calls the deprecated
    fn.experimental aliases, which print a warning per graph): same operators, same magnitudes, same order."""
    from nvidia.dali.auto_aug import rand_augment, trivial_augment

    if augment == "randaugment":
        suite = rand_augment.get_rand_augment_suite(use_shape=True, max_translate_rel=RANDAUGMENT_MAX_TRANSLATE_REL)
        return rand_augment.apply_rand_augment(
            _current_operators(suite), images, cfg.randaugment_n, cfg.randaugment_m,
            num_magnitude_bins=RANDAUGMENT_MAGNITUDE_BINS, shape=[size, size], fill_value=POLICY_FILL_VALUE, interp_type=None,
        )
    suite = trivial_augment.get_trivial_augment_wide_suite(use_shape=False, max_translate_abs=TRIVIALAUGMENT_MAX_TRANSLATE_PX)
    return trivial_augment.apply_trivial_augment(
        _current_operators(suite), images, num_magnitude_bins=RANDAUGMENT_MAGNITUDE_BINS, fill_value=POLICY_FILL_VALUE,
        interp_type=None,
    )


def _sharpness(data, kernel):
    from nvidia.dali import fn

    return fn.filter(data, kernel)


def _equalize(data, _):
    from nvidia.dali import fn

    return fn.equalize(data)


def _current_operators(suite: list) -> list:
    """`suite` with each augmentation whose operator auto_aug takes from fn.experimental rebuilt on the current one."""
    from nvidia.dali.auto_aug.core import augmentation

    current = {"sharpness": _sharpness, "equalize": _equalize}
    return [augmentation(current[aug.name], mag_range=aug.mag_range, randomly_negate=aug.randomly_negate,
                         mag_to_param=aug.mag_to_param, param_device=aug.param_device, name=aug.name)
            if aug.name in current else aug for aug in suite]
