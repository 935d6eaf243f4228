"""Train-step images/s of the study's five architectures: the study's way (fp32, eager, NCHW) vs each speed knob and all together.

Variants: study, channels_last, amp (bf16 autocast), compile (torch.compile), fast (all three).
Each case warms up first (compilation lands there and is reported as compile_s), then the median
of timed repeats gives images/s. On a GPU the MFU is the counted train-step FLOPs per second over
the bf16 matmul peak measured in the same run. `--quick` on CPU shrinks widths and batches, and
compiles resnet18 only (CPU compilation takes minutes per graph).
"""

from __future__ import annotations

import argparse
import gc

import torch

from fasttrain.models.counting import train_flops_per_image
from kernels_bench.measure.flops import bf16_matmul_peak_flops
from kernels_bench.measure.timing import load_average, peak_memory_mb, reset_peak_memory, time_calls
from kernels_bench.measure.train_step import StepSettings, SyntheticTrainStep

VARIANTS = {
    "study": StepSettings(),
    "channels_last": StepSettings(channels_last=True),
    "amp": StepSettings(amp="bf16"),
    "compile": StepSettings(compile=True),
    "fast": StepSettings(channels_last=True, amp="bf16", compile=True),
}
MODELS = ("vgg19", "resnet18", "resnet50", "resnext50_32x4d", "t2t_vit_t_14")
# reduced sizes for CPU runs; vgg19's default norm is BatchNorm (the study's "VGG19 (BN)")
QUICK_KNOBS = {
    "vgg19": {"width": 0.125},
    "resnet18": {"width": 0.25},
    "resnet50": {"width": 0.125},
    "resnext50_32x4d": {"width": 0.25},
    "t2t_vit_t_14": {"embed_dim": 96, "depth": 4, "num_heads": 2},
}
SMOKE_KNOBS = {
    "vgg19": {"width": 0.0625},
    "resnet18": {"width": 0.125, "layers": [1, 1, 1, 1]},
    "resnet50": {"width": 0.0625, "layers": [1, 1, 1, 1]},
    "resnext50_32x4d": {"width": 0.125, "layers": [1, 1, 1, 1]},
    "t2t_vit_t_14": {"embed_dim": 32, "depth": 1, "num_heads": 2},
}
PROFILES = {  # batch, warm-up steps, timed repeats, steps per repeat
    "full": {"batch": 256, "warmup": 3, "repeats": 5, "calls": 5},
    "quick": {"batch": 8, "warmup": 1, "repeats": 3, "calls": 1},
    "smoke": {"batch": 8, "warmup": 1, "repeats": 2, "calls": 1},
}
NUM_CLASSES = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("step suite")
    group.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    group.add_argument("--variants", default=None,
                       help=f"comma-separated subset of {','.join(VARIANTS)} (default: all; on CPU with --quick all but "
                            "the standalone compile, to keep one CPU compilation)")
    group.add_argument("--batch-size", type=int, default=None, help="images per step (default 256; --quick 8)")
    group.add_argument("--image-size", type=int, default=64)
    group.add_argument("--compile-models", default=None,
                       help="models that get the compile/fast variants (default: all; on CPU with --quick resnet18 only)")


def profile_name(args: argparse.Namespace) -> str:
    if getattr(args, "smoke", False):
        return "smoke"
    return "quick" if args.quick else "full"


def knobs_for(model: str, profile: str, device: str) -> dict:
    """Full size on a GPU (or a full CPU run); reduced widths for quick and smoke runs."""
    if profile == "smoke":
        return dict(SMOKE_KNOBS[model])
    if profile == "quick" and device == "cpu":
        return dict(QUICK_KNOBS[model])
    return {}


def pick(text: str, valid, what: str) -> list[str]:
    from fasttrain.errors import UserError

    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in valid]
    if unknown or not chosen:
        raise UserError(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(valid)}")
    return chosen


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    profile = profile_name(args)
    sizes = PROFILES[profile]
    batch = args.batch_size or sizes["batch"]
    models = pick(args.models, MODELS, "model(s)")
    default_variants = [v for v in VARIANTS if v != "compile"] if device.type == "cpu" and profile == "quick" else list(VARIANTS)
    variants = pick(args.variants or ",".join(default_variants), VARIANTS, "variant(s)")
    if args.compile_models is not None:
        compiled = set(pick(args.compile_models, MODELS, "model(s)")) if args.compile_models else set()
    elif device.type == "cpu" and profile != "full":
        compiled = {"resnet18"} & set(models)  # the model of the CPU goal; each CPU compilation takes minutes
    else:
        compiled = set(models)
    peak = bf16_matmul_peak_flops(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # the trainer's default (train.tf32 = true)
        torch.backends.cudnn.allow_tf32 = True

    cases = []
    for model in models:
        knobs = knobs_for(model, profile, device.type)
        flops = train_flops_per_image(model, knobs, num_classes=NUM_CLASSES, image_size=args.image_size)
        study_rate = None
        for variant in variants:
            settings = VARIANTS[variant]
            case = {"model": model, "knobs": knobs, "variant": variant, "settings": settings.label, "batch_size": batch,
                    "image_size": args.image_size, "train_gflops_per_image": round(flops / 1e9, 4)}
            if settings.compile and model not in compiled:
                cases.append({**case, "skipped": "compile limited to " + (", ".join(sorted(compiled)) or "no model")
                              + " in this run (CPU compilation takes minutes per graph)"})
                continue
            step = SyntheticTrainStep(model, knobs, settings, num_classes=NUM_CLASSES, batch_size=batch,
                                      image_size=args.image_size, device=device)
            reset_peak_memory(device)
            warmup = sizes["warmup"] + (1 if settings.compile else 0)
            timing = time_calls(step, device, warmup=warmup, repeats=sizes["repeats"], calls_per_repeat=sizes["calls"])
            rate = batch / timing.median_s
            if variant == "study":
                study_rate = rate
            case.update(
                images_per_s=round(rate, 2), step_ms=round(timing.median_s * 1000, 2), spread=round(timing.spread, 3),
                peak_mem_mb=peak_memory_mb(device), warmup_s=round(timing.warmup_s, 2),
                # the first call of a compiled step traces and compiles; later warm-up calls run at speed
                compile_s=round(max(0.0, timing.warmup_s - warmup * timing.median_s), 2) if settings.compile else None,
                vs_study=round(rate / study_rate, 3) if study_rate else None,
                mfu=round(flops * rate / peak, 4) if peak else None,
                load_average=load_average(),
            )
            cases.append(case)
            print(f"step {model} {variant}: {rate:,.1f} images/s" + (f" (compile {case['compile_s']} s)" if settings.compile else ""),
                  flush=True)
            del step
            _release(device)
    return {"cases": cases, "result": _summary(cases, device.type, peak, profile)}


def _summary(cases: list[dict], device: str, peak: float | None, profile: str) -> dict:
    measured = [c for c in cases if "images_per_s" in c]
    per_model = {}
    for model in dict.fromkeys(c["model"] for c in measured):
        rows = {c["variant"]: c for c in measured if c["model"] == model}
        best = max(rows.values(), key=lambda c: c["images_per_s"])
        per_model[model] = {
            "fast_vs_study": rows["fast"]["vs_study"] if "fast" in rows else None,
            "best_variant": best["variant"],
            "best_vs_study": best["vs_study"],
        }
    goals = {}
    if device == "cpu" and "resnet18" in per_model:
        ratio = per_model["resnet18"]["fast_vs_study"]
        goals["cpu_resnet18_fast_vs_study_ge_5x"] = {"measured": ratio, "met": ratio is not None and ratio >= 5.0}
    if device == "cuda":
        for model in ("resnet50", "resnext50_32x4d"):
            fast = next((c for c in measured if c["model"] == model and c["variant"] == "fast"), None)
            if fast:
                goals[f"gpu_{model}_mfu_ge_45pct"] = {"measured": fast["mfu"], "met": fast["mfu"] >= 0.45}
    return {"profile": profile, "bf16_matmul_peak_tflops": round(peak / 1e12, 1) if peak else None,
            "per_model": per_model, "goals": goals,
            "memory_note": "peak_mem_mb: CUDA peak allocated per case" if device == "cuda" else
            "peak_mem_mb: the process's peak RSS so far (on CPU it only grows, so it bounds each case from above)"}


def to_markdown(report: dict) -> str:
    lines = [f"### step: train-step images/s ({report['device']}, {report['result']['profile']} profile)", "",
             "| model | variant | batch | images/s | × study | step ms | compile s | peak MB | MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        if "skipped" in c:
            lines.append(f"| {c['model']} | {c['variant']} | {c['batch_size']} | skipped: {c['skipped']} | | | | | |")
            continue
        mfu = f"{100 * c['mfu']:.1f}%" if c.get("mfu") is not None else "-"
        lines.append(f"| {c['model']} | {c['variant']} | {c['batch_size']} | {c['images_per_s']:,.1f} | "
                     f"{c['vs_study'] or '-'} | {c['step_ms']} | {c['compile_s'] if c['compile_s'] is not None else '-'} | "
                     f"{c['peak_mem_mb']} | {mfu} |")
    summary = report["result"]
    if summary["bf16_matmul_peak_tflops"]:
        lines += ["", f"bf16 matmul peak measured in this run: {summary['bf16_matmul_peak_tflops']} TFLOP/s"]
    for name, goal in summary["goals"].items():
        lines.append(f"- goal {name}: measured {goal['measured']} → {'met' if goal['met'] else 'NOT met'}")
    lines.append(f"- {summary['memory_note']}")
    return "\n".join(lines) + "\n"
