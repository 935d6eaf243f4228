"""T2T-ViT attention at the shapes the model really runs: which SDPA backend takes each call, and its time.

The shapes are not written here: one forward of T2T-ViT-t-14 at the study's 64×64 input (batch 256; smoke: a
small width at the same input) records every F.scaled_dot_product_attention call it makes (a TorchFunctionMode:
query/key/value shapes and dtype, under the bf16 autocast the fast path uses). Each distinct call is then timed
forward + backward with PyTorch's own choice and with each backend forced in turn (torch.nn.attention.sdpa_kernel);
a backend that cannot take the call is recorded with its error. The profiler names the kernels the default runs.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from kernels_bench.core import doing, emit, time_calls

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
SMOKE_KNOBS = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default 256; smoke 2)")
    parser.add_argument("--image-size", type=int, default=64, help="input side (default 64, the study's)")


class AttentionCalls(TorchFunctionMode):
    """Counts F.scaled_dot_product_attention calls by (query, key, value shapes, dtype)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            self.calls[(tuple(q.shape), tuple(k.shape), tuple(v.shape), str(out.dtype).replace("torch.", ""))] += 1
        return out


def model_attention_calls(batch: int, image_size: int, device: torch.device, knobs: dict) -> Counter:
    """The SDPA calls of one training-mode forward of t2t_vit_t_14, under bf16 autocast."""
    from fasttrain.models import create_model

    model = create_model("t2t_vit_t_14", 200, img_size=image_size, **knobs).to(device)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    with AttentionCalls() as recorder, torch.autocast(device.type, dtype=torch.bfloat16), torch.no_grad():
        model(images)
    return recorder.calls


def _kernels(call) -> list[str]:
    """Names of the device kernels (CUDA) or scaled-dot-product aten ops (CPU) one call runs, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    try:
        with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
            call()
            if cuda:
                torch.cuda.synchronize()
    except RuntimeError as err:
        return [f"error: {str(err).splitlines()[0][:200]}"]
    names = [e.key for e in prof.key_averages() if cuda or "scaled_dot" in e.key]
    return sorted(set(names))[:12]


def _time_shape(shapes: tuple, dtype: str, device: torch.device, repeats: int) -> dict:
    q_shape, k_shape, v_shape = shapes
    dtype_ = getattr(torch, dtype)
    q, k, v = (torch.randn(s, device=device, dtype=dtype_, requires_grad=True) for s in (q_shape, k_shape, v_shape))
    grad = torch.randn(q_shape[:-1] + v_shape[-1:], device=device, dtype=dtype_)

    def forward_backward():
        F.scaled_dot_product_attention(q, k, v).backward(grad)

    def timed() -> float:
        return round(time_calls(forward_backward, device, warmup=2, repeats=repeats, calls_per_repeat=3).median_s * 1000, 4)

    backends = {}
    for name, backend in BACKENDS.items():
        try:
            with sdpa_kernel([backend]):
                backends[name] = {"runs": True, "ms": timed()}
        except RuntimeError as err:
            backends[name] = {"runs": False, "error": str(err).splitlines()[0][:200]}
    runnable = {n: b["ms"] for n, b in backends.items() if b["runs"]}
    return {"q": list(q_shape), "k": list(k_shape), "v": list(v_shape), "dtype": dtype, "default_ms": timed(),
            "backends": backends, "fastest_forced_backend": min(runnable, key=runnable.get) if runnable else None,
            "kernels_default": _kernels(forward_backward)}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    batch = args.batch_size or (2 if args.smoke else 256)
    knobs = SMOKE_KNOBS if args.smoke else {}
    with doing("t2t_attention: recording the model's attention calls"):
        calls = model_attention_calls(batch, args.image_size, device, knobs)
    cases = []
    for (q, k, v, dtype), count in calls.items():
        with doing(f"t2t_attention q{list(q)} {dtype}"):
            case = {"calls_per_forward": count, **_time_shape((q, k, v), dtype, device, 2 if args.smoke else 10)}
        cases.append(case)
        emit("t2t_attention", case)
        print(f"t2t_attention q{case['q']} {dtype} ×{count}: default {case['default_ms']} ms, fastest forced "
              f"{case['fastest_forced_backend']}", flush=True)
    largest = max(cases, key=lambda c: c["q"][-2] * c["k"][-2], default=None)
    return {"cases": cases, "result": {
        "model": "t2t_vit_t_14", "knobs": knobs, "batch_size": batch, "image_size": args.image_size,
        "distinct_calls": len(cases), "largest_tokens": largest["q"][-2] if largest else None,
        "largest_default_ms": largest["default_ms"] if largest else None,
        "largest_fastest_forced_backend": largest["fastest_forced_backend"] if largest else None,
        "note": "ms: median forward+backward of one call at the recorded shape; default: PyTorch's own backend choice"}}
