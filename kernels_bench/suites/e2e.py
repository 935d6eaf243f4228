"""End to end: the real Trainer for a fixed number of steps on a prepared cache, against the model-only
upper bound (same model and settings, synthetic tensors already on the device) and the study's path
(reference pipeline, fp32, eager, NCHW).

The trainer's images/s is its own results.json figure (the first log window, which holds compilation
and warm-up, is left out); the model-only figure is the median of timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
from pathlib import Path

import torch

from fasttrain.engine.runtime import resolve_amp
from kernels_bench.core import (StepSettings, SyntheticTrainStep, apply_backend_settings, doing, emit, first_call_seconds,
                                inductor_cache_state, load_average, merge, require_dali, synthetic_data, time_calls,
                                train_for_steps)

PROFILES = {
    "full": {"model": "resnet50", "knobs": {}, "batch": 256, "steps": 50, "log_every": 10, "image_size": 64,
             "classes": 100, "per_class": 150, "test_per_class": 2},
    "quick": {"model": "resnet18", "knobs": {"width": 0.25}, "batch": 32, "steps": 20, "log_every": 5, "image_size": 64,
              "classes": 10, "per_class": 150, "test_per_class": 2},
    "smoke": {"model": "resnet18", "knobs": {"width": 0.125, "layers": [1, 1, 1, 1]}, "batch": 8, "steps": 6,
              "log_every": 2, "image_size": 32, "classes": 4, "per_class": 20, "test_per_class": 1},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("e2e suite")
    group.add_argument("--model", default=None, help="model name (default resnet50; --quick on CPU: resnet18 at width 0.25)")
    group.add_argument("--steps", type=int, default=None, help="optimizer steps per trainer run")
    group.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                       help="fast path precision; auto: bf16 on CUDA and on CPUs with native bf16, else off")
    group.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                       help="torch.compile in the fast path; auto: on for CUDA, off on CPU (minutes of compilation)")
    group.add_argument("--warm-compile", action="store_true",
                       help="compile the model-only graph a second time after torch.compiler.reset() (compile_warm_s)")
    group.add_argument("--fast-backends", default="auto",
                       help="comma-separated data.backend values of the fast path, one trainer run each (default auto; "
                            "the fast recipes use dali)")
    group.add_argument("--require-dali", action="store_true",
                       help="fail, rather than leave dali out, when nvidia.dali is not importable")
    group.add_argument("--workdir", type=Path, default=None, help="where the synthetic set, cache and run dirs go (default: a temp dir)")


def _profile(args) -> str:
    return "smoke" if getattr(args, "smoke", False) else ("quick" if args.quick and args.device == "cpu" else "full")


def _fast_settings(args, device: torch.device) -> StepSettings:
    amp = resolve_amp(args.amp, device)
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    return StepSettings(channels_last=True, amp=amp, compile=compiled)


def _sections(model: str, knobs: dict, settings: StepSettings, backend: str, sizes: dict, steps: int) -> dict:
    return {"model": {"name": model, **knobs},
            "train": {"batch_size": sizes["batch"], "max_steps": steps, "epochs": 1000, "amp": settings.amp,
                      "channels_last": settings.channels_last},
            "log": {"every_steps": sizes["log_every"]}, "compile": {"mode": "default" if settings.compile else "off"},
            "data": {"backend": backend}}


def _model_only(model: str, knobs: dict, fast: StepSettings, sizes: dict, steps: int, device: torch.device,
                warm_compile: bool) -> dict:
    """The fast settings' model-only upper bound: Trainer.train_step on a resident batch, medians of log windows;
    compiled, the first compile of this process (cold unless Inductor's cache already holds it) and, with
    `warm_compile`, the same graph once more after torch.compiler.reset() (warm: Inductor's caches hit)."""
    step = SyntheticTrainStep(model, knobs, fast, num_classes=sizes["classes"], batch_size=sizes["batch"],
                              image_size=sizes["image_size"], device=device)
    first_s = first_call_seconds(step, device)
    timing = time_calls(step, device, warmup=2, repeats=max(3, steps // sizes["log_every"]),
                        calls_per_repeat=sizes["log_every"])
    case = {"path": "fast", "kind": "model_only", "model": model, "knobs": knobs, "settings": fast.label,
            "backend": None, "batch_size": sizes["batch"], "steps": 3 + len(timing.seconds) * sizes["log_every"],
            "images_per_s": round(sizes["batch"] / timing.median_s, 2), "load_average": load_average()}
    del step
    gc.collect()
    if fast.compile:
        case["compile_cold_s"] = round(max(0.0, first_s - timing.median_s), 2)
    if fast.compile and warm_compile:
        torch.compiler.reset()  # dynamo forgets the graph; Inductor's caches (in memory and on disk) remain
        again = SyntheticTrainStep(model, knobs, fast, num_classes=sizes["classes"], batch_size=sizes["batch"],
                                   image_size=sizes["image_size"], device=device)
        case["compile_warm_s"] = round(max(0.0, first_call_seconds(again, device) - timing.median_s), 2)
        del again
        gc.collect()
    return case


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    profile = _profile(args)
    sizes = dict(PROFILES[profile])
    model = args.model or sizes["model"]
    knobs = sizes["knobs"] if model == sizes["model"] else {}
    steps = args.steps or sizes["steps"]
    fast = _fast_settings(args, device)
    study = StepSettings()
    fast_backends = [b.strip() for b in args.fast_backends.split(",") if b.strip()]
    if "dali" in fast_backends and not require_dali(args.require_dali):
        fast_backends.remove("dali")
    if not fast_backends:
        from fasttrain.errors import UserError

        raise UserError("no fast-path backend left to measure (--fast-backends named only dali, which is not importable)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kernels_bench_e2e_"))
    try:
        data = synthetic_data(workdir / "synthetic", image_size=sizes["image_size"], classes=sizes["classes"],
                              per_class=sizes["per_class"], test_per_class=sizes["test_per_class"])
        # model-only first: a finished trainer's pipeline threads (DALI's) must not share the cores with it;
        # it runs under the backend flags (TF32, cudnn.benchmark) the Trainer sets for itself
        apply_backend_settings(device)
        cache_at_start = inductor_cache_state()
        with doing(f"e2e model-only {model}"):
            model_only_case = _model_only(model, knobs, fast, sizes, steps, device, args.warm_compile)
        emit("e2e", model_only_case)
        print(f"e2e model-only: {model_only_case['images_per_s']:,.1f} images/s", flush=True)
        trainers = []
        for path, settings, backend in [("study", study, "reference")] + [("fast", fast, b) for b in fast_backends]:
            with doing(f"e2e trainer {path} ({backend})"):
                trainer = train_for_steps(merge({"data": data}, _sections(model, knobs, settings, backend, sizes, steps)),
                                          workdir / f"run_{path}_{backend}", args.device)
            results = trainer.results
            trainers.append({"path": path, "kind": "trainer", "model": model, "knobs": knobs, "settings": settings.label,
                             "backend": results["backend"], "asked_backend": backend, "batch_size": sizes["batch"],
                             "steps": results["steps"], "images_per_s": round(results["images_per_s"], 2),
                             "wall_time_s": round(results["wall_time_s"], 2), "load_average": load_average()})
            emit("e2e", trainers[-1])
            print(f"e2e trainer {path} ({results['backend']}): {results['images_per_s']:,.1f} images/s", flush=True)
            del trainer
            gc.collect()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    study_case, fast_cases = trainers[0], trainers[1:]
    cases = [*fast_cases, study_case, model_only_case]  # fast trainer(s), study trainer, model-only
    model_only = model_only_case["images_per_s"]
    per_backend = {c["backend"]: round(c["images_per_s"] / model_only, 3) for c in fast_cases}
    ratio = fast_cases[0]["images_per_s"] / model_only
    return {"cases": cases, "result": {
        "profile": profile, "inductor_cache_at_start": cache_at_start,
        "fast_settings": {"channels_last": fast.channels_last, "amp": fast.amp, "compile": fast.compile},
        "e2e_vs_model_only": round(ratio, 3),
        "e2e_vs_model_only_by_backend": per_backend,
        "fast_vs_study": round(fast_cases[0]["images_per_s"] / study_case["images_per_s"], 3),
        "goals": {"e2e_vs_model_only_ge_0.95": {"measured": round(ratio, 3), "met": ratio >= 0.95}},
        "note": ("fast path: data.backend as asked (first one: the headline ratio), channels_last, amp/compile as in "
                 "fast_settings (on a CPU without native bf16, autocast to bf16 is emulated and slower, so auto leaves it "
                 "off); study path: reference pipeline, fp32, eager, NCHW"),
    }}


def to_markdown(report: dict) -> str:
    result = report["result"]
    lines = [f"### e2e ({report['device']}, {result['profile']} profile)", "",
             "| path | measured | settings | backend | batch | steps | images/s |", "|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['path']} | {c['kind']} | {c['settings']} | {c['backend'] or '-'} | {c['batch_size']} | "
                     f"{c['steps']} | {c['images_per_s']:,.1f} |")
    goal = result["goals"]["e2e_vs_model_only_ge_0.95"]
    lines += ["", f"- e2e / model-only: {result['e2e_vs_model_only']} (goal ≥ 0.95: {'met' if goal['met'] else 'NOT met'})",
              f"- fast / study path: {result['fast_vs_study']}", f"- {result['note']}"]
    return "\n".join(lines) + "\n"
