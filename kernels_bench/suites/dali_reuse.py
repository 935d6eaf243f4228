"""DALI buffer reuse: does a batch change under torch while torch still reads it, the host having run ahead?

The consumer reads each batch the way the trainer does: its kernels are queued on torch's current stream behind
GPU work still pending (a matmul chain of about BUSY_MS), and the host asks for the next batch at once. If the
pipeline handed torch memory that it refills for a later batch before torch's queued read runs, that read sees
the later batch's pixels and its checksum differs from the same batch read at once after a synchronization.
A control producer that does exactly that (a ring of two buffers refilled on its own stream without waiting for
torch's) must be caught in the same run, or the check itself cannot see reuse and the suite fails.

On CPU there is no device queue: DALI's CPU mode is read at once (what a CPU trainer does), and the control's late
read is emulated by reading each batch LAG batches after it was handed out.
"""

from __future__ import annotations

import argparse
import collections
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from kernels_bench.core import doing, emit, require_dali, synchronize

BATCHES = 8
BUSY_MS = 30.0  # per batch: long against DALI's own per-batch time, so the host is far ahead of torch's reads
LAG = 2  # CPU only: how many batches later the control's reads happen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--require-dali", action="store_true", help="fail, rather than skip, when nvidia.dali is not importable")


def busy_work(device: torch.device, milliseconds: float) -> Callable[[], None]:
    """A callable that queues about `milliseconds` of matmuls on torch's current stream (CUDA) and returns at once;
    on CPU, nothing (CPU work cannot be queued behind)."""
    if device.type != "cuda":
        return lambda: None
    a = torch.randn(2048, 2048, device=device)
    a = a / a.norm()
    synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(10):
        a @ a
    end.record()
    end.synchronize()
    repeats = max(1, round(milliseconds / (begin.elapsed_time(end) / 10)))

    def work() -> None:
        b = a
        for _ in range(repeats):
            b = b @ a
    return work


def checksums_now(batches: Iterable[torch.Tensor], device: torch.device) -> list[float]:
    """Each batch summed the moment it is handed out, everything before it finished: the reference."""
    sums = []
    for images in batches:
        synchronize(device)
        sums.append(float(images.double().sum()))
    return sums


def checksums_late(batches: Iterable[torch.Tensor], busy: Callable[[], None], lag: int) -> list[float]:
    """Each batch summed by kernels queued behind `busy` work (and, with `lag`, only after `lag` more batches were
    handed out); the host reads the sums at the end, so nothing waits for the device in between."""
    pending: collections.deque = collections.deque()
    sums = []
    for images in batches:
        busy()
        pending.append(images)
        while len(pending) > lag:
            sums.append(pending.popleft().double().sum())
    sums += [images.double().sum() for images in pending]
    return [float(s) for s in sums]


def ring_batches(source: list[torch.Tensor], device: torch.device, slots: int = 2) -> Iterator[torch.Tensor]:
    """The control: hands out `source` through a ring of `slots` buffers, each refilled on a stream of its own
    that never waits for torch's (the host waits only for its own copy): exactly the reuse the check must catch."""
    ring = [torch.empty_like(source[0]) for _ in range(slots)]
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    for k, batch in enumerate(source):
        slot = ring[k % slots]
        if side is None:
            slot.copy_(batch)
        else:
            with torch.cuda.stream(side):
                slot.copy_(batch, non_blocking=True)
            side.synchronize()
        yield slot


def compare(reference: list[float], late: list[float]) -> dict:
    equal = [abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in zip(reference, late)]
    return {"batches": len(reference), "equal": equal, "passed": len(late) == len(reference) and all(equal),
            "reference_sums": reference, "late_sums": late}


def run(args: argparse.Namespace) -> dict:
    from fasttrain.config import DataConfig
    from fasttrain.data.pipelines import build_pipeline

    device = torch.device(args.device)
    batch, size = (8, 32) if args.smoke else (256, 64)
    busy = busy_work(device, BUSY_MS)
    lag = 0 if device.type == "cuda" else LAG

    with doing("dali_reuse control (a ring of two buffers refilled without waiting)"):
        generator = torch.Generator().manual_seed(0)
        source = [torch.rand(batch, 3, size, size, generator=generator).to(device) for _ in range(BATCHES)]
        control = compare(checksums_now(ring_batches(source, device), device),
                          checksums_late(ring_batches(source, device), busy, lag))
        control["detected"] = not control.pop("passed")
    emit("dali_reuse", {"case": "control", "detected": control["detected"]})

    dali: dict
    if not require_dali(getattr(args, "require_dali", False)):
        dali = {"status": "skipped", "reason": "nvidia.dali is not importable"}
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (batch * BATCHES, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, 200, batch * BATCHES).astype(np.int64)
        cfg = DataConfig(backend="dali", image_size=size, augment="rrc")

        def dali_batches() -> Iterator[torch.Tensor]:
            pipe = build_pipeline(cfg, images, labels, train=True, batch_size=batch, device=device, seed=0)
            return (x for x, _ in pipe)

        with doing("dali_reuse dali"):
            # CPU: read at once, as a CPU trainer does; CUDA: read behind queued work, as the GPU trainer does
            dali = compare(checksums_now(dali_batches(), device), checksums_late(dali_batches(), busy, 0))
        emit("dali_reuse", {"case": "dali", "passed": dali["passed"], "equal": dali["equal"]})
    failed = ([] if control["detected"] else ["control_not_detected"]) + (["dali"] if dali.get("passed") is False else [])
    print(f"dali_reuse: control {'caught' if control['detected'] else 'NOT caught'}; dali "
          f"{dali.get('status') or ('intact' if dali['passed'] else 'CHANGED under a late read')}", flush=True)
    return {"control": control, "dali": dali, "busy_ms_per_batch": BUSY_MS if device.type == "cuda" else 0,
            "late_read": "queued behind busy work on torch's stream" if device.type == "cuda"
            else f"CPU: control read {LAG} batches late; DALI read at once (no device queue on CPU)",
            "failed": failed}
