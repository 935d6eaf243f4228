"""Strong augmentation: dali vs reference statistics per policy (op-frequency proxies, output distributions) and loader images/s next to the plain crop."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from fasttrain.config import DataConfig
from fasttrain.data.pipelines import build_pipeline
from fasttrain.data.pipelines.augment import POLICY_MODES
from fasttrain.data.pipelines.backend_choice import dali_importable
import statistics
import time

DEVICES = ("cpu", "cuda")
# Loader cases: (label, augment, erasing, backends that run it)
LOADER_CASES = (
    ("rrc", "rrc", 0.0, ("reference", "torch", "dali")),
    ("rrc+erasing", "rrc", 0.25, ("reference", "torch", "dali")),
    ("trivialaugment", "trivialaugment", 0.0, ("reference", "dali")),
    ("randaugment", "randaugment", 0.0, ("reference", "dali")),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=256, help="per-rank batch (default 256)")
    parser.add_argument("--image-size", type=int, default=64, help="square image side (default 64)")
    parser.add_argument("--batches", type=int, default=32, help="batches per timed pass (default 32; --quick: 4)")
    parser.add_argument("--samples", type=int, default=2048, help="images per parity statistic (default 2048; --quick: 512)")


def smooth_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 images: upsampled low-frequency noise plus a bright square, so histogram, contrast and
    geometric operations all change them visibly (uniform noise would hide most of a policy)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((count, 3, 6, 6), dtype=np.float32))
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    images = images.mul(160).add(40)
    side = size // 3
    for i, (top, left) in enumerate(rng.integers(0, size - side, (count, 2))):
        images[i, :, top : top + side, left : left + side] += 60
    return images.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _unnormalize(batch: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255
    return batch.float().cpu() * std + mean


def policy_statistics(cfg: DataConfig, images: np.ndarray, device: torch.device, batch: int) -> dict[str, float]:
    """Per-image effects of the policy with the crop and flip turned into identities (full-image crop, no
    flip), so each output is compared with its own input:
    - changed: share of images that differ from their input by more than 2 levels somewhere;
    - geometric: share with over 2 % of pixels at the fill value 0 (shear/rotate/translate happened);
    - mean_abs_change: mean |output - input| in pixel levels; brightness_shift: mean output - input level;
    - output_std: mean per-image standard deviation (contrast-type operations move it)."""
    cfg = dataclasses.replace(cfg, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, loader_workers=2)
    labels = np.zeros(len(images), dtype=np.int64)
    pipe = build_pipeline(cfg, images, labels, train=True, batch_size=batch, device=device, seed=0)
    order = pipe.plan.batches(0)
    changed, geometric, abs_change, shift, spread = [], [], [], [], []
    pipe.set_epoch(0)
    for indices, (out, _) in zip(order, pipe):
        out = _unnormalize(out, cfg)
        source = torch.from_numpy(images[indices]).permute(0, 3, 1, 2).float()
        diff = out - source
        changed.append(diff.abs().flatten(1).amax(1) > 2)
        geometric.append((out.amax(1) < 0.5).flatten(1).float().mean(1) > 0.02)
        abs_change.append(diff.abs().flatten(1).mean(1))
        shift.append(diff.flatten(1).mean(1))
        spread.append(out.flatten(1).std(1))
    mean = lambda parts: round(float(torch.cat(parts).float().mean()), 4)
    return {"changed": mean(changed), "geometric": mean(geometric), "mean_abs_change": mean(abs_change),
            "brightness_shift": mean(shift), "output_std": mean(spread)}


def pass_rates(pipe, repeats: int, device: torch.device) -> dict[str, float]:
    """Medians over whole passes after a warm-up pass: images/s of the pass (start-up included; the figure
    compared), and as diagnostics the seconds to the first batch (DALI defines a policy graph per pass) and
    images/s after it (not comparable across backends: reference workers prefetch while the first batch waits)."""
    whole, steady, first = [], [], []
    for epoch in range(repeats + 1):
        pipe.set_epoch(epoch)
        start = time.perf_counter()
        seen, first_at, first_count = 0, None, 0
        for images, _ in pipe:
            seen += images.shape[0]
            if first_at is None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first_at, first_count = time.perf_counter(), seen
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.perf_counter()
        if epoch:
            whole.append(seen / (end - start))
            steady.append((seen - first_count) / max(end - first_at, 1e-9))
            first.append(first_at - start)
    return {"images_per_s": round(statistics.median(whole), 1), "steady_images_per_s": round(statistics.median(steady), 1),
            "first_batch_s": round(statistics.median(first), 3)}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(getattr(args, "device", None) or "cpu")
    quick, smoke = bool(getattr(args, "quick", False)), bool(getattr(args, "smoke", False))
    batch = 32 if smoke else getattr(args, "batch_size", 256)
    size = 32 if smoke else getattr(args, "image_size", 64)
    batches = 2 if smoke else 4 if quick else getattr(args, "batches", 8)
    samples = 64 if smoke else 512 if quick else getattr(args, "samples", 2048)
    have_dali = dali_importable()

    parity: dict[str, dict] = {}
    images = smooth_images(samples, size)
    for policy in POLICY_MODES:
        cfg = DataConfig(image_size=size, augment=policy)
        row = {"reference": policy_statistics(dataclasses.replace(cfg, backend="reference"), images, device, batch)}
        if have_dali:
            row["dali"] = policy_statistics(dataclasses.replace(cfg, backend="dali"), images, device, batch)
            row["largest_gap"] = round(max(abs(row["dali"][k] - row["reference"][k]) for k in ("changed", "geometric")), 4)
        parity[policy] = row

    loader: dict[str, dict] = {}
    split = smooth_images(batch * batches, size, seed=1)
    labels = np.zeros(len(split), dtype=np.int64)
    repeats = 1 if smoke or quick else 2
    for label, augment, erasing, backends in LOADER_CASES:
        rates = {}
        for backend in backends:
            if backend == "dali" and not have_dali:
                continue
            cfg = DataConfig(backend=backend, image_size=size, augment=augment, erasing=erasing)
            pipe = build_pipeline(cfg, split, labels, train=True, batch_size=batch, device=device, seed=0)
            rates[backend] = pass_rates(pipe, repeats, device)
            del pipe
        base = rates.get("reference")
        for backend, figures in rates.items():
            if base and backend != "reference":
                figures["vs_reference"] = round(figures["images_per_s"] / base["images_per_s"], 2)
        loader[label] = rates

    print(f"augment: {size}x{size}, batch {batch}, device {device}, {torch.get_num_threads()} torch threads")
    for policy, row in parity.items():
        for backend in ("reference", "dali"):
            if backend in row:
                print(f"parity {policy:<15} {backend:<10} " + " ".join(f"{k}={v}" for k, v in row[backend].items()))
    for label, rates in loader.items():
        for backend, figures in rates.items():
            print(f"loader {label:<15} {backend:<10} " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return {"suite": "augment", "device": str(device), "batch_size": batch, "image_size": size,
            "parity_samples": samples, "parity": parity, "loader_images_per_s": loader}
