"""DDP's gradient buckets, measured: step time and peak memory for gradient_as_bucket_view × bucket_cap_mb.

One process, a process group of world size 1 (NCCL on CUDA, gloo on CPU) through a FileStore, so no port is
opened. The step is the fast path's eager one (resnet50 at 64×64, batch 256, channels_last, bf16 autocast, SGD
with momentum): torch.compile is left out on purpose, because a compiled DDP module is split at bucket
boundaries (DDPOptimizer), so every bucket size would be another cold compile of minutes. With one rank the
all-reduce moves nothing between GPUs: what differs is DDP's own cost (bucket copies, reducer launches) and the
gradients' memory, not the communication overlap of several GPUs. fasttrain keeps DDP's defaults until these
figures (and a run on several GPUs) say otherwise; nothing here decides it.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from kernels_bench.core import doing, emit, peak_memory_mb, reset_peak_memory, time_calls

VIEWS = (False, True)
BUCKET_MB = (25, 100)  # 25: DDP's default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model name (default resnet50; smoke: a small resnet18)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 256; smoke 8)")


def _step(model_name: str, knobs: dict, batch: int, size: int, device: torch.device, view: bool, bucket_mb: int):
    from fasttrain.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, 200, **knobs).to(device, memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index or 0] if device.type == "cuda" else None,
        gradient_as_bucket_view=view, bucket_cap_mb=bucket_mb)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 200, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=not view)  # a bucket view must keep its gradient tensors
        with amp:
            loss = torch.nn.functional.cross_entropy(ddp(images), labels)
        loss.backward()
        optimizer.step()

    return step, ddp


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    model = args.model or ("resnet18" if args.smoke else "resnet50")
    knobs = {"width": 0.125, "layers": [1, 1, 1, 1]} if args.smoke else {}
    batch = args.batch_size or (8 if args.smoke else 256)
    size = 32 if args.smoke else 64
    repeats, calls = (2, 1) if args.smoke else (5, 5)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        torch.backends.cudnn.benchmark = True
    cases = []
    with tempfile.TemporaryDirectory(prefix="ddp_buckets_") as work:
        store = dist.FileStore(str(Path(work) / "store"), 1)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)
        try:
            for view, bucket_mb in itertools.product(VIEWS, BUCKET_MB):
                with doing(f"ddp_buckets view={view} bucket_cap_mb={bucket_mb}"):
                    step, ddp = _step(model, knobs, batch, size, device, view, bucket_mb)
                    reset_peak_memory(device)
                    timing = time_calls(step, device, warmup=3, repeats=repeats, calls_per_repeat=calls)
                    case = {"gradient_as_bucket_view": view, "bucket_cap_mb": bucket_mb, "model": model, "batch_size": batch,
                            "step_ms": round(timing.median_s * 1000, 3), "spread": round(timing.spread, 3),
                            "images_per_s": round(batch / timing.median_s, 1), "peak_mem_mb": peak_memory_mb(device)}
                    del step, ddp
                cases.append(case)
                emit("ddp_buckets", case)
                print(f"ddp_buckets view={view} bucket {bucket_mb} MB: {case['step_ms']} ms, peak {case['peak_mem_mb']} MB",
                      flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        finally:
            dist.destroy_process_group()
    default = next(c for c in cases if not c["gradient_as_bucket_view"] and c["bucket_cap_mb"] == 25)
    for case in cases:
        case["vs_default"] = round(default["step_ms"] / case["step_ms"], 3)
    best = min(cases, key=lambda c: c["step_ms"])
    return {"cases": cases, "result": {
        "world_size": 1, "backend": "nccl" if device.type == "cuda" else "gloo", "compiled": False,
        "fastest": {"gradient_as_bucket_view": best["gradient_as_bucket_view"], "bucket_cap_mb": best["bucket_cap_mb"],
                    "vs_default": best["vs_default"]},
        "note": "vs_default: DDP's defaults (no bucket view, 25 MB) step time over this case's; one rank, eager; "
                "fasttrain's DDP settings are left at the defaults until measured figures say otherwise"}}
