"""Train-step images/s of the study's five architectures: the study's way (fp32, eager, NCHW) vs each speed knob and all together.

Variants: study, channels_last, amp (forced bf16 autocast), compile (torch.compile), fast (what a
user of the device gets: train.amp = "auto", channels_last, compile) and fast_bf16 (the same with bf16
forced; on a CPU without native bf16 that is emulated and slow, so it is reported beside fast).
Each case warms up first (compilation lands there and is reported as compile_s), then the median
of timed repeats gives images/s. On a GPU the MFU is the counted train-step FLOPs (forward+backward,
FlopCounterMode) per second over two peaks: the bf16 matmul peak measured in the same run and the
datasheet dense bf16 peak of the detected GPU. `--quick` on CPU shrinks widths and batches, and
compiles resnet18 only (CPU compilation takes minutes per graph). On CPU every case's first step runs
in a child process first (kernels_bench.measure.crash_guard): a case whose kernels crash is skipped
with the reason instead of killing the run.
"""

from __future__ import annotations

import argparse
import gc

import torch

from fasttrain.models.counting import train_flops_per_image
from kernels_bench.core import (StepSettings, SyntheticTrainStep, apply_backend_settings, bf16_matmul_peak_flops,
                                datasheet_peak, doing, emit, first_call_seconds, first_crashes, inductor_cache_state,
                                load_average, peak_memory_mb, reset_peak_memory, time_calls)

VARIANTS = {
    "study": StepSettings(),
    "channels_last": StepSettings(channels_last=True),
    "amp": StepSettings(amp="bf16"),
    "compile": StepSettings(compile=True),
    "fast": StepSettings(channels_last=True, amp="auto", compile=True),
    "fast_bf16": StepSettings(channels_last=True, amp="bf16", compile=True),
}
CPU_GOAL = 1.3  # issue 14: the fast variant ≥ 1.3 × the study's fp32 eager step for resnet18 on CPU
GPU_MFU_GOAL = 0.35  # issue 14: ResNet-50 at 64 px ≥ 35 % MFU against the datasheet peak
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
    "resnext50_32x4d": {"width": 0.125, "layers": [1, 1, 1, 1], "base_width": 8},
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
    group.add_argument("--warm-compile", action="store_true",
                       help="after each compiled case, reset torch.compile and build the same graph again: its first step "
                            "is the warm compile (Inductor's on-disk caches hit), recorded as compile_warm_s")


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


def _plan(models: list[str], variants: list[str], compiled: set[str], profile: str, device: torch.device,
          batch: int, image_size: int) -> list[dict]:
    """Every (model, variant) case with its resolved settings, or the reason it is skipped."""
    cases = []
    for model in models:
        knobs = knobs_for(model, profile, device.type)
        flops = train_flops_per_image(model, knobs, num_classes=NUM_CLASSES, image_size=image_size)
        resolved = {}
        for variant in variants:
            settings = VARIANTS[variant].resolved(device)
            case = {"model": model, "knobs": knobs, "variant": variant, "settings": settings.label, "amp": settings.amp,
                    "batch_size": batch, "image_size": image_size, "train_gflops_per_image": round(flops / 1e9, 4),
                    "_settings": settings, "_flops": flops}
            same_as = next((v for v, other in resolved.items() if other == settings), None)
            if same_as:
                case["skipped"] = f"same settings as {same_as} on this device (train.amp auto resolves to {settings.amp})"
            elif settings.compile and model not in compiled:
                case["skipped"] = ("compile limited to " + (", ".join(sorted(compiled)) or "no model")
                                   + " in this run (CPU compilation takes minutes per graph)")
            resolved.setdefault(variant, settings)
            cases.append(case)
    return cases


def _guard_crashes(cases: list[dict]) -> None:
    """CPU only: run each distinct (model, layout, precision) step once in a child process; a crash marks
    every case that shares it as skipped with the reason."""
    keys = []
    for case in cases:
        if "skipped" in case:
            continue
        key = {"model": case["model"], "knobs": case["knobs"], "channels_last": case["_settings"].channels_last,
               "amp": case["_settings"].amp, "batch_size": case["batch_size"], "image_size": case["image_size"],
               "num_classes": NUM_CLASSES}
        case["_probe"] = key
        if key not in keys:
            keys.append(key)
    crashed = first_crashes("kernels_bench.core:probe_step", keys)
    for case in cases:
        if "_probe" in case and keys.index(case["_probe"]) in crashed:
            case["skipped"] = "crashed: " + crashed[keys.index(case["_probe"])]
            print(f"step {case['model']} {case['variant']}: skipped, {case['skipped']}", flush=True)


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
    apply_backend_settings(device)
    peak = bf16_matmul_peak_flops(device) if device.type == "cuda" else None
    sheet = datasheet_peak(device)

    cases = _plan(models, variants, compiled, profile, device, batch, args.image_size)
    if device.type == "cpu":
        _guard_crashes(cases)
    study_rate = {}
    cache_at_start = inductor_cache_state()
    for case in cases:
        settings, flops = case.pop("_settings"), case.pop("_flops")
        case.pop("_probe", None)
        if "skipped" in case:
            emit("step", case)
            continue
        model = case["model"]
        with doing(f"step {model} {case['variant']}"):
            _measure(case, settings, flops, sizes, batch, args, device, study_rate, peak, sheet)
        emit("step", case)
        print(f"step {model} {case['variant']}: {case['images_per_s']:,.1f} images/s"
              + (f" (compile cold {case['compile_s']} s, warm {case.get('compile_warm_s')} s)" if settings.compile else ""),
              flush=True)
        _release(device)
    summary = _summary(cases, device.type, peak, sheet, profile)
    summary["inductor_cache_at_start"] = cache_at_start
    return {"cases": cases, "result": summary}


def _measure(case: dict, settings: StepSettings, flops: float, sizes: dict, batch: int, args, device: torch.device,
             study_rate: dict, peak: float | None, sheet: dict | None) -> None:
    """Time one (model, variant) case into `case`: the first call apart (a compiled step's compilation), then the
    median of timed repeats; with --warm-compile, the same graph once more after torch.compiler.reset()."""
    model = case["model"]

    def new_step() -> SyntheticTrainStep:
        return SyntheticTrainStep(model, case["knobs"], settings, num_classes=NUM_CLASSES, batch_size=batch,
                                  image_size=args.image_size, device=device)

    step = new_step()
    reset_peak_memory(device)
    first_s = first_call_seconds(step, device)
    timing = time_calls(step, device, warmup=sizes["warmup"], repeats=sizes["repeats"], calls_per_repeat=sizes["calls"])
    rate = batch / timing.median_s
    if case["variant"] == "study":
        study_rate[model] = rate
    case.update(
        images_per_s=round(rate, 2), step_ms=round(timing.median_s * 1000, 2), spread=round(timing.spread, 3),
        peak_mem_mb=peak_memory_mb(device), first_step_s=round(first_s, 2),
        # the first call of a compiled step traces and compiles; the calls after it run at speed
        compile_s=round(max(0.0, first_s - timing.median_s), 2) if settings.compile else None,
        vs_study=round(rate / study_rate[model], 3) if model in study_rate else None,
        mfu=round(flops * rate / peak, 4) if peak else None,
        mfu_datasheet=round(flops * rate / sheet["flops"], 4) if sheet else None,
        load_average=load_average(),
    )
    del step
    if settings.compile and args.warm_compile:
        torch.compiler.reset()  # dynamo forgets the graph; Inductor's caches (in memory and on disk) remain
        _release(device)
        again = new_step()
        case["compile_warm_s"] = round(max(0.0, first_call_seconds(again, device) - timing.median_s), 2)
        del again


def _summary(cases: list[dict], device: str, peak: float | None, sheet: dict | None, profile: str) -> dict:
    measured = [c for c in cases if "images_per_s" in c]
    per_model = {}
    for model in dict.fromkeys(c["model"] for c in measured):
        rows = {c["variant"]: c for c in measured if c["model"] == model}
        best = max(rows.values(), key=lambda c: c["images_per_s"])
        per_model[model] = {
            "fast_vs_study": rows["fast"]["vs_study"] if "fast" in rows else None,
            "fast_bf16_vs_study": rows["fast_bf16"]["vs_study"] if "fast_bf16" in rows else None,
            "best_variant": best["variant"],
            "best_vs_study": best["vs_study"],
        }
    goals = {}
    if device == "cpu" and "resnet18" in per_model:
        ratio = per_model["resnet18"]["fast_vs_study"]
        goals[f"cpu_resnet18_fast_vs_study_ge_{CPU_GOAL}x"] = {"measured": ratio, "met": ratio is not None and ratio >= CPU_GOAL}
    if device == "cuda":
        for model in ("resnet50", "resnext50_32x4d"):
            fast = next((c for c in measured if c["model"] == model and c["variant"] == "fast"), None)
            if fast and fast["mfu_datasheet"] is not None:
                goals[f"gpu_{model}_datasheet_mfu_ge_{round(100 * GPU_MFU_GOAL)}pct"] = {
                    "measured": fast["mfu_datasheet"], "met": fast["mfu_datasheet"] >= GPU_MFU_GOAL}
    return {"profile": profile, "bf16_matmul_peak_tflops": round(peak / 1e12, 1) if peak else None,
            "datasheet_peak": {"gpu": sheet["name"], "tflops": sheet["flops"] / 1e12} if sheet else None,
            "flops_note": "train_gflops_per_image: forward+backward FLOPs of one image, counted by "
                          "torch.utils.flop_counter.FlopCounterMode (fasttrain.models.counting.train_flops_per_image); "
                          "MFU = that × images/s ÷ peak",
            "per_model": per_model, "goals": goals,
            "memory_note": "peak_mem_mb: CUDA peak allocated per case" if device == "cuda" else
            "peak_mem_mb: the process's peak RSS so far (on CPU it only grows, so it bounds each case from above)"}


def to_markdown(report: dict) -> str:
    lines = [f"### step: train-step images/s ({report['device']}, {report['result']['profile']} profile)", "",
             "| model | variant | amp | batch | images/s | × study | step ms | compile s | peak MB | MFU (measured peak) | MFU (datasheet) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        if "skipped" in c:
            lines.append(f"| {c['model']} | {c['variant']} | {c['amp']} | {c['batch_size']} | skipped: {c['skipped']} | | | | | | |")
            continue
        mfu, sheet = (f"{100 * c[key]:.1f}%" if c.get(key) is not None else "-" for key in ("mfu", "mfu_datasheet"))
        lines.append(f"| {c['model']} | {c['variant']} | {c['amp']} | {c['batch_size']} | {c['images_per_s']:,.1f} | "
                     f"{c['vs_study'] or '-'} | {c['step_ms']} | {c['compile_s'] if c['compile_s'] is not None else '-'} | "
                     f"{c['peak_mem_mb']} | {mfu} | {sheet} |")
    summary = report["result"]
    if summary["bf16_matmul_peak_tflops"]:
        lines += ["", f"bf16 matmul peak measured in this run: {summary['bf16_matmul_peak_tflops']} TFLOP/s"]
    if summary["datasheet_peak"]:
        lines.append(f"datasheet dense bf16 peak of the {summary['datasheet_peak']['gpu']}: {summary['datasheet_peak']['tflops']} TFLOP/s")
    lines.append(f"- {summary['flops_note']}")
    for name, goal in summary["goals"].items():
        lines.append(f"- goal {name}: measured {goal['measured']} → {'met' if goal['met'] else 'NOT met'}")
    lines.append(f"- {summary['memory_note']}")
    return "\n".join(lines) + "\n"
