"""Input-pipeline throughput: train-augmented images/s of each backend in steady state, beside a plain
study-style DataLoader (same torchvision transforms, 2 workers) as the honest baseline.

Each source is warmed up on a few batches of pass 0; then pass 1 is timed: its first batch apart
(`pass_start_s`: DALI's graph build, the hand-out to workers) and the rest as the steady state
(≥ 100 batches by default). Ratios are against the plain loader and against `reference`.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fasttrain.config import DataConfig
from fasttrain.data.pipelines import build_pipeline
from fasttrain.data.pipelines.backend_choice import BACKENDS
from fasttrain.data.pipelines.reference_pipeline import study_transform
from kernels_bench.core import doing, emit, require_dali

PLAIN = "plain_dataloader"
# the torch backend with the split kept on the host (data.device_memory_cap_gb = 0): the path a split larger than the
# cap takes, gathered on the host and copied per batch
NONRESIDENT = "torch_nonresident"
WARMUP_BATCHES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=256, help="per-rank batch (default 256)")
    parser.add_argument("--image-size", type=int, default=64, help="square image side (default 64)")
    parser.add_argument("--batches", type=int, default=None,
                        help="steady-state batches timed per source (default 100; --quick 8, --smoke 3)")
    parser.add_argument("--backends", default=f"{PLAIN},reference,torch,dali",
                        help=f"comma-separated subset of {PLAIN},{NONRESIDENT},{','.join(BACKENDS)}")
    parser.add_argument("--require-dali", action="store_true",
                        help="fail, rather than skip dali, when nvidia.dali is not importable")


def _synthetic_split(count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), rng.integers(0, 200, count).astype(np.int64)


class _PlainSamples(Dataset):
    """What a study's training script feeds a DataLoader: one image at a time through the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])


def _plain_passes(images, labels, cfg: DataConfig, batch: int, device: torch.device) -> Callable[[int], Iterator]:
    loader = DataLoader(_PlainSamples(images, labels, study_transform(cfg, cfg.augment)), batch_size=batch, shuffle=True,
                        num_workers=2, pin_memory=device.type == "cuda", drop_last=True)

    def one_pass(epoch: int):
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return one_pass


def _pipeline_passes(pipe) -> Callable[[int], Iterator]:
    def one_pass(epoch: int):
        pipe.set_epoch(epoch)
        return iter(pipe)

    return one_pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(passes: Callable[[int], Iterator], device: torch.device) -> dict:
    """First batch of a cold pass, then a warm pass: its first batch apart, the rest as steady state."""
    started = time.perf_counter()
    cold = passes(0)
    next(cold)
    _sync(device)
    first_batch_s = time.perf_counter() - started
    for _ in range(WARMUP_BATCHES - 1):
        next(cold, None)
    del cold
    started = time.perf_counter()
    warm = passes(1)
    next(warm)
    _sync(device)
    pass_start_s = time.perf_counter() - started
    started, seen, batches = time.perf_counter(), 0, 0
    for images, _ in warm:
        seen += images.shape[0]
        batches += 1
    _sync(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": round(seen / seconds, 1), "steady_batches": batches, "pass_start_s": round(pass_start_s, 4),
            "cold_first_batch_s": round(first_batch_s, 3)}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(getattr(args, "device", None) or "cpu")
    smoke, quick = bool(getattr(args, "smoke", False)), bool(getattr(args, "quick", False))
    batch = args.batch_size
    size = args.image_size
    steady = args.batches or (3 if smoke else 8 if quick else 100)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(wanted) - set(BACKENDS) - {PLAIN, NONRESIDENT})
    if unknown:
        from fasttrain.errors import UserError

        raise UserError(f"unknown backend(s) {', '.join(unknown)}; choose from {PLAIN}, {NONRESIDENT}, {', '.join(BACKENDS)}")
    skipped = {}
    if "dali" in wanted and not require_dali(getattr(args, "require_dali", False)):
        wanted.remove("dali")
        skipped["dali"] = "nvidia.dali is not importable here"
    images, labels = _synthetic_split(batch * (steady + 1), size)  # one pass = the timed pass's batches + its first

    sources: dict[str, dict] = {}
    for name in wanted:
        backend = {PLAIN: "reference", NONRESIDENT: "torch"}.get(name, name)
        cfg = DataConfig(backend=backend, image_size=size, augment="rrc",
                         **({"device_memory_cap_gb": 0.0} if name == NONRESIDENT else {}))
        with doing(f"loader {name}"):
            if name == PLAIN:
                passes = _plain_passes(images, labels, cfg, batch, device)
            else:
                pipe = build_pipeline(cfg, images, labels, train=True, batch_size=batch, device=device, seed=0)
                passes = _pipeline_passes(pipe)
            sources[name] = measure(passes, device)
        emit("loader", {"source": name, **sources[name]})
        del passes
    for stats in sources.values():
        for base in (PLAIN, "reference"):
            rate = sources.get(base, {}).get("images_per_s")
            stats[f"ratio_vs_{base}"] = round(stats["images_per_s"] / rate, 2) if rate else None

    print(f"loader: train augmentation, {size}x{size}, batch {batch}, device {device}, {torch.get_num_threads()} torch threads")
    print(f"{'source':<18} {'images/s':>12} {'vs plain':>9} {'pass start s':>13}")
    for name, stats in sources.items():
        ratio = stats[f"ratio_vs_{PLAIN}"]
        print(f"{name:<18} {stats['images_per_s']:>12,.0f} {('%.2fx' % ratio) if ratio else '-':>9} {stats['pass_start_s']:>13}")
    return {
        "suite": "loader", "device": str(device), "batch_size": batch, "image_size": size,
        "augment": "rrc+hflip+normalize", "torch_threads": torch.get_num_threads(), "backends": sources,
        "skipped": skipped,
        "note": (f"{NONRESIDENT}: the torch backend with data.device_memory_cap_gb = 0 (split on the host, gathered and "
                 f"copied per batch). {PLAIN}: a study-style torch DataLoader (torchvision RandomResizedCrop, flip, ToTensor, Normalize per "
                 "sample; 2 workers; shuffle; random uint8 images) - the honest baseline. images_per_s: steady state of a "
                 "warm pass (its first batch excluded, timed as pass_start_s: DALI's graph build, workers' hand-out); "
                 "cold_first_batch_s: the very first batch (process start-up of workers, CUDA/DALI initialisation)"),
    }


def to_markdown(report: dict) -> str:
    result = report["result"]
    lines = [f"### loader: train-augmented images/s ({report['device']}, {result['image_size']}×{result['image_size']}, "
             f"batch {result['batch_size']})", "",
             "| source | images/s | × plain DataLoader | × reference | steady batches | pass start s | cold first batch s |",
             "|---|---|---|---|---|---|---|"]
    for name, b in result["backends"].items():
        lines.append(f"| {name} | {b['images_per_s']:,.0f} | {b[f'ratio_vs_{PLAIN}'] or '-'} | {b['ratio_vs_reference'] or '-'} | "
                     f"{b['steady_batches']} | {b['pass_start_s']} | {b['cold_first_batch_s']} |")
    lines += [f"- skipped: {name}: {why}" for name, why in result["skipped"].items()]
    return "\n".join(lines + ["", f"- {result['note']}"]) + "\n"
