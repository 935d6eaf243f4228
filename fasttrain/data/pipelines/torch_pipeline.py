"""The `torch` backend: the split as a uint8 tensor on the device, crop/flip/normalize as batched tensor ops, no workers."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from fasttrain.data.pipelines.augment import MODES, CropParams, batch_crops
from fasttrain.data.pipelines.base import BatchPipeline, normalize_scale_shift


def _axis_taps(start: torch.Tensor, length: torch.Tensor, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-tap bilinear sampling of windows [start, start+length) to out_size pixels (half-pixel centres,
    edges clamped inside the window, as PIL's resize of the cropped image does). Returns (low, high, frac)."""
    centres = torch.arange(out_size, device=start.device, dtype=torch.float32).add_(0.5)
    src = start[:, None] + centres[None] * (length / out_size)[:, None] - 0.5
    first, last = start[:, None], (start + length - 1)[:, None]
    src = torch.minimum(torch.maximum(src, first), last)
    low = src.floor()
    frac = src - low
    high = torch.minimum(low + 1, last)
    return low.long(), high.long(), frac


def window_rows(params: CropParams) -> np.ndarray:
    """(N, 5) float32 rows top, left (in the padded image), height, width, flip (0/1): one batch's crop plan
    as one array, so a whole pass's plan is one host→device copy."""
    return np.stack([params.top + params.pad, params.left + params.pad, params.height, params.width,
                     params.flip], axis=1).astype(np.float32)


class CropResizeNormalize:
    """Per-sample windows resized to a square output in one batched pass, flipped and normalized.

    Works on NHWC uint8 batches and writes NHWC floats, so the NCHW view it returns is
    channels_last with no extra copy. Interpolation is separable: columns are gathered from the
    uint8 rows (cheap, one byte per value), then whole rows of the column-resized image are
    gathered, so the innermost dimension stays W×3 wide and the CPU vectorises it.
    """

    def __init__(self, scale: np.ndarray, shift: np.ndarray, device: torch.device):
        self.scale = torch.from_numpy(scale).to(device)
        self.shift = torch.from_numpy(shift).to(device)
        self.channel = torch.arange(3, device=device)

    def __call__(self, batch: torch.Tensor, windows: torch.Tensor | None, out_size: int, pad: int = 0) -> torch.Tensor:
        """`windows`: (N, 5) float32 on the device (see `window_rows`), or None to normalize only."""
        count, height, width, _ = batch.shape
        if windows is None:  # normalize only
            out = batch.reshape(count, height, width * 3).float()
            out.mul_(self.scale.repeat(width)).add_(self.shift.repeat(width))
            return out.view(count, height, width, 3).permute(0, 3, 1, 2)
        device = batch.device
        if pad:
            batch = torch.nn.functional.pad(batch, (0, 0, pad, pad, pad, pad))
            count, height, width, _ = batch.shape
        top, left, window_h, window_w, flip = windows.unbind(1)
        row_low, row_high, row_frac = _axis_taps(top, window_h, out_size)
        col_low, col_high, col_frac = _axis_taps(left, window_w, out_size)
        flip = flip[:, None] > 0.5  # always applied: testing for "any flip" on the host would wait for the device
        col_low = torch.where(flip, col_low.flip(1), col_low)
        col_high = torch.where(flip, col_high.flip(1), col_high)
        col_frac = torch.where(flip, col_frac.flip(1), col_frac)

        rows = batch.reshape(count, height, width * 3)
        spread = lambda cols: (cols[:, :, None] * 3 + self.channel).reshape(count, 1, out_size * 3).expand(count, height, out_size * 3)
        left_vals = torch.gather(rows, 2, spread(col_low)).float()
        right_vals = torch.gather(rows, 2, spread(col_high)).float()
        resized_cols = torch.lerp(left_vals, right_vals, col_frac.repeat_interleave(3, dim=1)[:, None, :])

        flat_rows = resized_cols.view(count * height, out_size * 3)
        base = (torch.arange(count, device=device) * height)[:, None]
        upper = flat_rows.index_select(0, (base + row_low).view(-1)).view(count, out_size, out_size * 3)
        lower = flat_rows.index_select(0, (base + row_high).view(-1)).view(count, out_size, out_size * 3)
        out = torch.lerp(upper, lower, row_frac[:, :, None])
        out.mul_(self.scale.repeat(out_size)).add_(self.shift.repeat(out_size))
        return out.view(count, out_size, out_size, 3).permute(0, 3, 1, 2)


class TorchPipeline(BatchPipeline):
    """Batched tensor-op augmentation. The whole split lives on the device when it fits under
    data.device_memory_cap_gb (on CPU the cache memmap is used in place); otherwise each batch is gathered
    on the host by worker threads into one of two (pinned) buffers two batches ahead of use, and copied to
    the device on a side stream one batch ahead, so neither the gather nor the copy holds up the compute stream."""

    backend = "torch"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernel = CropResizeNormalize(*normalize_scale_shift(self.cfg), self.device)
        self.resident = self.images.nbytes <= self.cfg.device_memory_cap_gb * (1 << 30)
        if self.resident:
            with warnings.catch_warnings():
                # a read-only memmap is fine: the pipeline never writes to it
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self.stored = torch.from_numpy(self.images).to(self.device)
        self._staging: _HostStaging | None = None
        self.transfers = 0
        """Host→device copies so far: three per pass (its plan) when the split lives on the device."""

    def _to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Every host→device copy of this pipeline goes through here and is counted (`transfers`): from
        pinned memory without waiting on CUDA, a plain no-op move on CPU."""
        self.transfers += 1
        tensor = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _pass_plan(self, epoch: int, start: int, batches: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The rest of a pass, on the device in three copies whatever its length: sample indices, labels and
        crop windows/flips of batches start, start+1, … (each batch's randomness still its own stream)."""
        flat = np.concatenate(batches)
        windows = None
        if MODES[self.augment].crop != "none":
            plan, (height, width) = self.plan, self.images.shape[1:3]
            rows = [window_rows(batch_crops(self.cfg, self.augment, plan.seed, epoch, plan.rank, plan.world_size, start + k,
                                            len(indices), height, width)) for k, indices in enumerate(batches)]
            windows = self._to_device(np.concatenate(rows))
        return self._to_device(flat), self._to_device(self.labels[flat]), windows

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.plan.batches(epoch, start)
        if not batches:
            return
        size = self.cfg.image_size
        pad = self.cfg.pad if MODES[self.augment].crop == "pad_crop" else 0
        indices, labels, windows = self._pass_plan(epoch, start, batches)
        bounds = np.cumsum([0] + [len(b) for b in batches]).tolist()
        if self.resident:
            uint8_batches = (self.stored.index_select(0, indices[bounds[k] : bounds[k + 1]]) for k in range(len(batches)))
        else:
            if self._staging is None:
                self._staging = _HostStaging(self.images, self.plan.batch_size, self.device)
            uint8_batches = self._staging.batches(batches)
            self.transfers += len(batches)  # the images themselves, when the split does not live on the device
        for k, current in enumerate(uint8_batches):
            rows = slice(bounds[k], bounds[k + 1])
            images = self.kernel(current, None if windows is None else windows[rows], size, pad)
            yield images.to(self.output_dtype), labels[rows]


class _HostStaging:
    """The non-resident path: batches of a host split gathered by worker threads (np.take on slices of the batch,
    which releases the GIL) into two (pinned, on CUDA) buffers, started two batches ahead, and copied to the
    device on a side stream one batch ahead; the compute stream waits for a copy only where it uses it."""

    def __init__(self, images: np.ndarray, batch_size: int, device: torch.device):
        self.images, self.device = images, device
        self.on_cuda = device.type == "cuda"
        self.buffers = [torch.empty((batch_size,) + images.shape[1:], dtype=torch.uint8, pin_memory=self.on_cuda)
                        for _ in range(2)]
        self.copied: list[torch.cuda.Event | None] = [None, None]  # the last copy out of each buffer
        self.workers = max(1, min(4, os.cpu_count() or 1))
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fasttrain-gather")
        self.copy_stream = torch.cuda.Stream(device) if self.on_cuda else None

    def _gather(self, indices: np.ndarray, slot: int) -> list[Future]:
        """Start filling buffer `slot` with images[indices] (after the buffer's previous copy has finished)."""
        host = self.buffers[slot][: len(indices)].numpy()
        event = self.copied[slot]

        def part(rows: np.ndarray) -> None:
            if event is not None:
                event.synchronize()  # waits in the worker thread, never in the caller
            np.take(self.images, indices[rows[0] : rows[-1] + 1], axis=0, out=host[rows[0] : rows[-1] + 1])

        return [self.pool.submit(part, rows) for rows in np.array_split(np.arange(len(indices)), self.workers) if len(rows)]

    def _copy(self, count: int, slot: int, gathered: list[Future]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Start moving a gathered buffer to the device on the copy stream: (tensor, its copy's event)."""
        for future in gathered:
            future.result()
        host = self.buffers[slot][:count]
        if not self.on_cuda:
            return host, None  # read by the kernel before this buffer is gathered into again
        with torch.cuda.stream(self.copy_stream):
            moved = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        self.copied[slot] = done
        return moved, done

    def _for_compute(self, moved: torch.Tensor, done: torch.cuda.Event | None) -> torch.Tensor:
        """The copied batch, usable on the current (compute) stream: it waits for the copy on the device only."""
        if done is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(done)
            moved.record_stream(compute)  # allocated on the copy stream, freed only after the compute stream used it
        return moved

    def batches(self, batches: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """uint8 batches on the device, in order; the gather of batch k+2 runs while batch k is used."""
        pending: dict[int, list[Future]] = {}
        try:
            for k in range(min(2, len(batches))):
                pending[k] = self._gather(batches[k], k % 2)
            upcoming = self._copy(len(batches[0]), 0, pending.pop(0))
            for k in range(len(batches)):
                current = upcoming
                if k + 1 < len(batches):
                    upcoming = self._copy(len(batches[k + 1]), (k + 1) % 2, pending.pop(k + 1))
                yield self._for_compute(*current)
                if k + 2 < len(batches):
                    pending[k + 2] = self._gather(batches[k + 2], k % 2)
        finally:  # an abandoned pass: let its gathers finish before a new pass reuses the buffers
            for futures in pending.values():
                for future in futures:
                    future.result()
