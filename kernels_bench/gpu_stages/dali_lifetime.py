"""DALI output lifetime: is a yielded batch still intact after the pipeline has moved on?

A batch is held while a long kernel keeps the GPU busy (so the consumer would read it late), the
pipeline is advanced two batches, and then the held batch's checksum is compared with the same
batch from a run that clones and synchronises after every batch. Equal sums: DALI does not reuse
the memory of a batch the caller still holds (or the backend copies out of it in time).
"""

from __future__ import annotations

import numpy as np
import torch

from kernels_bench.gpu_stages.common import stage_main

BATCHES = 6


def _checksums_synchronised(make_pipe, device) -> list[float]:
    sums = []
    for images, _ in make_pipe():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sums.append(float(images.clone().double().sum()))
    return sums


def _checksums_held(make_pipe, device, busy_s: float) -> list[float]:
    """Hold batch k, keep the GPU busy, pull batches k+1 and k+2, and only then read batch k."""
    held, sums = [], []
    for images, _ in make_pipe():
        if device.type == "cuda":
            spin = torch.randn(4096, 4096, device=device)
            for _ in range(max(1, int(busy_s * 50))):  # ~20 ms of matmul each on a big GPU
                spin = spin @ spin
                spin = spin / spin.norm()
        held.append(images)
        if len(held) > 2:
            sums.append(float(held.pop(0).double().sum()))
    sums += [float(h.double().sum()) for h in held]
    return sums


def body(args) -> dict:
    from fasttrain.config import DataConfig
    from fasttrain.data.pipelines import build_pipeline
    from fasttrain.data.pipelines.backend_choice import dali_importable

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA GPU"}
    if not dali_importable():
        return {"status": "skipped", "reason": "nvidia.dali is not importable"}
    batch, size = (8, 32) if args.smoke else (256, 64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * BATCHES, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 200, batch * BATCHES).astype(np.int64)
    cfg = DataConfig(backend="dali", image_size=size, augment="rrc")

    def make_pipe():
        return build_pipeline(cfg, images, labels, train=True, batch_size=batch, device=device, seed=0)

    reference = _checksums_synchronised(make_pipe, device)
    held = _checksums_held(make_pipe, device, busy_s=0 if args.smoke else 0.5)
    equal = [abs(a - b) <= 1e-6 * max(1.0, abs(a)) for a, b in zip(reference, held)]
    return {"status": "ok" if all(equal) and len(held) == len(reference) else "failed",
            "batches": len(reference), "equal": equal, "synchronised_sums": reference, "held_sums": held,
            "note": "" if device.type == "cuda" else "CPU-only DALI: no GPU kernel to hold the batch behind"}


if __name__ == "__main__":
    raise SystemExit(stage_main("dali_lifetime", body))
