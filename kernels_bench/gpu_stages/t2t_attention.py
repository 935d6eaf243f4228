"""T2T-ViT token attention: which SDPA backend runs the model's 4-D call, and its time against the old 3-D call.

Shapes are the first token block's at the study's 64×64 input (a 4-stride soft split: 256 tokens of
64 channels, batch 256). Each backend is forced in turn (torch.nn.attention.sdpa_kernel); one that
cannot take the call is recorded with its error. The 3-D call is timed as it was (whatever backend
PyTorch picks for it; on CUDA only the math kernel takes 3-D tensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels_bench.gpu_stages.common import stage_main
from kernels_bench.measure.timing import time_calls

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def _kernels(call) -> list[str]:
    """Names of the device kernels (CUDA) or top-level aten ops (CPU) one call runs, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]
    try:
        with profile(activities=activities) as prof:
            call()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
    except RuntimeError as err:
        return [f"error: {str(err).splitlines()[0][:200]}"]
    names = [e.key for e in prof.key_averages() if torch.cuda.is_available() or e.key.startswith("aten::_scaled_dot")]
    return sorted(set(names))[:10]


def body(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA GPU"}
    batch, tokens, width = (4, 64, 16) if args.smoke else (256, 256, 64)
    dtype = torch.bfloat16
    q, k, v = (torch.randn(batch, tokens, width, device=device, dtype=dtype) for _ in range(3))
    four = [t.unsqueeze(1) for t in (q, k, v)]
    repeats = 2 if args.smoke else 10

    def timed(call) -> float:
        return round(time_calls(call, device, warmup=2, repeats=repeats, calls_per_repeat=5).median_s * 1000, 4)

    with torch.autocast(device.type, dtype=dtype):
        backends = {}
        for name, backend in BACKENDS.items():
            try:
                with sdpa_kernel([backend]):
                    backends[name] = {"runs_4d": True, "ms": timed(lambda: F.scaled_dot_product_attention(*four))}
            except RuntimeError as err:
                backends[name] = {"runs_4d": False, "error": str(err).splitlines()[0][:200]}
        default_4d = timed(lambda: F.scaled_dot_product_attention(*four))
        try:
            old_3d = timed(lambda: F.scaled_dot_product_attention(q, k, v))
        except RuntimeError as err:
            old_3d = f"error: {str(err).splitlines()[0][:200]}"
        kernels_4d, kernels_3d = _kernels(lambda: F.scaled_dot_product_attention(*four)), _kernels(
            lambda: F.scaled_dot_product_attention(q, k, v))
    picked = min((b for b in backends.values() if b["runs_4d"]), key=lambda b: b["ms"], default=None)
    fastest = next((n for n, b in backends.items() if b is picked), None)
    return {"status": "ok", "shape_4d": [batch, 1, tokens, width], "dtype": "bf16", "backends": backends,
            "default_4d_ms": default_4d, "old_3d_ms": old_3d,
            "kernels_default_4d": kernels_4d, "kernels_old_3d": kernels_3d, "fastest_forced_backend": fastest,
            "speedup_4d_vs_3d": round(old_3d / default_4d, 2) if isinstance(old_3d, float) and default_4d else None}


if __name__ == "__main__":
    raise SystemExit(stage_main("t2t_attention", body))
