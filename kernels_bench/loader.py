"""Input-pipeline throughput: train-augmented images/s of each backend, and each one's ratio to `reference`."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fasttrain.config import DataConfig
from fasttrain.data.pipelines import build_pipeline
from fasttrain.data.pipelines.backend_choice import BACKENDS, dali_importable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=256, help="per-rank batch (default 256)")
    parser.add_argument("--image-size", type=int, default=64, help="square image side (default 64)")
    parser.add_argument("--batches", type=int, default=12, help="batches per timed epoch (default 12; --quick: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per backend, median reported (default 3; --quick: 2)")
    parser.add_argument("--backends", default="reference,torch,dali", help="comma-separated subset of reference,torch,dali")


def _synthetic_split(count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), rng.integers(0, 200, count).astype(np.int64)


def _images_per_second(pipe, repeats: int, device: torch.device) -> float:
    """Median over whole epochs (start-up of each pass included), after one warm-up epoch."""
    rates = []
    for epoch in range(repeats + 1):
        pipe.set_epoch(epoch)
        start = time.perf_counter()
        seen = 0
        for images, _ in pipe:
            seen += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch:  # epoch 0 warms up workers, allocators and DALI
            rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(getattr(args, "device", None) or "cpu")
    quick = bool(getattr(args, "quick", False))
    batch = getattr(args, "batch_size", 256)
    size = getattr(args, "image_size", 64)
    batches = 4 if quick else getattr(args, "batches", 12)
    repeats = 2 if quick else getattr(args, "repeats", 3)
    wanted = [b.strip() for b in getattr(args, "backends", "reference,torch,dali").split(",") if b.strip()]
    unknown = sorted(set(wanted) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"error: unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if "dali" in wanted and not dali_importable():
        wanted.remove("dali")
    images, labels = _synthetic_split(batch * batches, size)

    backends: dict[str, dict] = {}
    for name in wanted:
        cfg = DataConfig(backend=name, image_size=size, augment="rrc")
        pipe = build_pipeline(cfg, images, labels, train=True, batch_size=batch, device=device, seed=0)
        backends[name] = {"images_per_s": round(_images_per_second(pipe, repeats, device), 1)}
        del pipe
    base = backends.get("reference", {}).get("images_per_s")
    for stats in backends.values():
        stats["ratio_vs_reference"] = round(stats["images_per_s"] / base, 2) if base else None

    result = {
        "suite": "loader",
        "device": str(device),
        "batch_size": batch,
        "image_size": size,
        "augment": "rrc+hflip+normalize",
        "torch_threads": torch.get_num_threads(),
        "backends": backends,
    }
    print(f"loader: train augmentation, {size}x{size}, batch {batch}, device {device}, {torch.get_num_threads()} torch threads")
    print(f"{'backend':<10} {'images/s':>12} {'vs reference':>13}")
    for name, stats in backends.items():
        ratio = stats["ratio_vs_reference"]
        print(f"{name:<10} {stats['images_per_s']:>12,.0f} {('%.2fx' % ratio) if ratio else '-':>13}")
    return result
