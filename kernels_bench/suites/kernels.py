"""Kernels the architectures lean on: 3×3 conv and ResNeXt's grouped conv by dtype and memory format,
attention at T2T-ViT token shapes (SDPA vs explicit softmax(QKᵀ)V), and the batched random-resized-crop
of the torch pipeline vs DALI. Convolutions and attention are timed forward + backward."""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from kernels_bench.core import time_calls

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (batch, channels, side): resnet18's stage-2 conv and resnext50's stage-1 grouped conv at 64×64 input
CONV_SHAPES = {"full": (256, 128, 32), "quick": (8, 64, 32), "smoke": (2, 32, 8)}
GROUPED_SHAPES = {"full": (256, 128, 64), "quick": (8, 128, 16), "smoke": (2, 64, 8)}
# T2T-ViT-t-14 at 64×64: first token transformer (1 head, 32×32 tokens, token dim 64) and the backbone
# (6 heads, 8×8 tokens + class token, head dim 64)
ATTENTION_SHAPES = {"t2t_stage1": (1, 1024, 64), "backbone": (6, 65, 64)}
ATTENTION_BATCH = {"full": 128, "quick": 4, "smoke": 1}
RRC_BATCH = {"full": 256, "quick": 128, "smoke": 16}
REPEATS = {"full": 10, "quick": 3, "smoke": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("kernels suite")
    group.add_argument("--dtypes", default=None,
                       help="comma-separated of fp32,bf16,fp16 for the convolutions (default: all)")


def _profile(args) -> str:
    return "smoke" if getattr(args, "smoke", False) else ("quick" if args.quick else "full")


def _conv_cases(kind: str, shape: tuple, groups: int, dtypes: list[str], device: torch.device, repeats: int) -> list[dict]:
    batch, channels, side = shape
    cases = []
    baseline = None
    for dtype_name in dtypes:
        for memory_format in ("nchw", "channels_last"):
            fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
            dtype = DTYPES[dtype_name]
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
            conv = conv.to(device=device, dtype=dtype, memory_format=fmt)
            x = torch.randn(batch, channels, side, side, device=device, dtype=dtype).contiguous(memory_format=fmt)
            x.requires_grad_(True)
            grad = torch.randn(batch, channels, side, side, device=device, dtype=dtype).contiguous(memory_format=fmt)

            def forward_backward():
                conv(x).backward(grad)

            timing = time_calls(forward_backward, device, warmup=1, repeats=repeats)
            flops = 3 * 2 * batch * channels * (channels // groups) * 9 * side * side  # fwd + grad input + grad weight
            ms = timing.median_s * 1000
            baseline = baseline or ms
            cases.append({"kernel": kind, "shape": [batch, channels, side, side], "groups": groups, "dtype": dtype_name,
                          "memory_format": memory_format, "ms": round(ms, 3), "tflops": round(flops / timing.median_s / 1e12, 4),
                          "speedup_vs_first": round(baseline / ms, 3)})
            print(f"kernels {kind} {dtype_name} {memory_format}: {ms:.2f} ms", flush=True)
    return cases


def _attention_cases(batch: int, device: torch.device, repeats: int) -> list[dict]:
    dtype_name = "bf16" if device.type == "cuda" else "fp32"
    dtype = DTYPES[dtype_name]
    cases = []
    for where, (heads, tokens, head_dim) in ATTENTION_SHAPES.items():
        q, k, v = (torch.randn(batch, heads, tokens, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(batch, heads, tokens, head_dim, device=device, dtype=dtype)
        scale = head_dim ** -0.5

        def explicit():
            ((q @ k.transpose(-2, -1) * scale).softmax(dim=-1) @ v).backward(grad)

        def sdpa():
            F.scaled_dot_product_attention(q, k, v).backward(grad)

        explicit_ms = None
        for impl, fn in (("explicit_softmax", explicit), ("sdpa", sdpa)):
            ms = time_calls(fn, device, warmup=1, repeats=repeats).median_s * 1000
            explicit_ms = explicit_ms or ms
            cases.append({"kernel": "attention", "where": where, "shape": [batch, heads, tokens, head_dim], "dtype": dtype_name,
                          "impl": impl, "ms": round(ms, 3), "speedup_vs_first": round(explicit_ms / ms, 3)})
            print(f"kernels attention {where} {impl}: {ms:.2f} ms", flush=True)
    return cases


def _crop_cases(batch: int, device: torch.device, repeats: int) -> list[dict]:
    """The torch backend's batched kernel alone on a resident uint8 batch, vs DALI's pipeline on the same images
    (DALI's figure also holds its host-side batch gather: DALI's crop cannot be run apart from a pipeline)."""
    from fasttrain.config import DataConfig
    from fasttrain.data.pipelines import build_pipeline
    from fasttrain.data.pipelines.backend_choice import dali_importable
    from fasttrain.data.pipelines.base import normalize_scale_shift
    from fasttrain.data.pipelines.augment import sample_crop_params
    from fasttrain.data.pipelines.torch_pipeline import CropResizeNormalize, window_rows

    size, batches = 64, 4
    cfg = DataConfig(image_size=size, augment="rrc")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * batches, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch * batches).astype(np.int64)
    kernel = CropResizeNormalize(*normalize_scale_shift(cfg), device)
    resident = torch.from_numpy(images[:batch]).to(device)
    params = sample_crop_params(np.random.default_rng(1), batch, size, size, augment="rrc", output_size=size,
                                scale=cfg.crop_scale, ratio=cfg.crop_ratio, pad=cfg.pad, hflip=cfg.hflip)
    windows = torch.from_numpy(window_rows(params)).to(device)
    seconds = time_calls(lambda: kernel(resident, windows, size, params.pad), device, warmup=1, repeats=repeats).median_s
    torch_rate = batch / seconds
    cases = [{"kernel": "random_resized_crop", "impl": "torch_batched_kernel", "batch": batch, "image_size": size,
              "images_per_s": round(torch_rate, 1), "speedup_vs_first": 1.0}]
    if dali_importable():
        pipe = build_pipeline(DataConfig(backend="dali", image_size=size, augment="rrc"), images, labels, train=True,
                              batch_size=batch, device=device, seed=0)

        def one_epoch():
            for _ in pipe:
                pass

        seconds = time_calls(one_epoch, device, warmup=1, repeats=repeats).median_s
        rate = batch * batches / seconds
        cases.append({"kernel": "random_resized_crop", "impl": "dali_pipeline", "batch": batch, "image_size": size,
                      "images_per_s": round(rate, 1), "speedup_vs_first": round(rate / torch_rate, 3)})
    for case in cases:
        print(f"kernels random_resized_crop {case['impl']}: {case['images_per_s']:,.0f} images/s", flush=True)
    return cases


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    profile = _profile(args)
    repeats = REPEATS[profile]
    dtypes = [d.strip() for d in (args.dtypes or ",".join(DTYPES)).split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        from fasttrain.errors import UserError

        raise UserError(f"unknown --dtypes {', '.join(unknown) or '(none)'}; choose from {', '.join(DTYPES)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    plain_dtypes = [d for d in dtypes if d != "fp16"] if device.type == "cpu" else dtypes
    cases = _conv_cases("conv3x3", CONV_SHAPES[profile], 1, plain_dtypes, device, repeats)
    cases += _conv_cases("grouped_conv3x3", GROUPED_SHAPES[profile], 32, dtypes, device, repeats)
    cases += _attention_cases(ATTENTION_BATCH[profile], device, repeats)
    cases += _crop_cases(RRC_BATCH[profile], device, repeats)
    return {"cases": cases, "result": {"profile": profile,
                                       "note": "ms: median forward+backward; speedup_vs_first: against the first row of "
                                               "the same kernel (fp32 NCHW, explicit softmax, the torch crop kernel)"}}


def to_markdown(report: dict) -> str:
    lines = [f"### kernels ({report['device']}, {report['result']['profile']} profile)", "",
             "| kernel | case | shape | ms or images/s | speedup vs first |", "|---|---|---|---|---|"]
    for c in report["cases"]:
        if c["kernel"] == "random_resized_crop":
            lines.append(f"| {c['kernel']} | {c['impl']} | batch {c['batch']}, {c['image_size']}² | "
                         f"{c['images_per_s']:,.0f} images/s | {c['speedup_vs_first']} |")
        elif c["kernel"] == "attention":
            lines.append(f"| attention {c['where']} | {c['impl']} {c['dtype']} | {c['shape']} | {c['ms']} ms | {c['speedup_vs_first']} |")
        else:
            lines.append(f"| {c['kernel']} (groups {c['groups']}) | {c['dtype']} {c['memory_format']} | {c['shape']} | "
                         f"{c['ms']} ms ({c['tflops']} TFLOP/s) | {c['speedup_vs_first']} |")
    lines.append(f"\n{report['result']['note']}")
    return "\n".join(lines) + "\n"
