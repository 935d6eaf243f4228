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

from kernels_bench.measure.timing import apply_backend_settings, load_average, time_calls
from kernels_bench.measure.train_step import StepSettings, SyntheticTrainStep
from fasttrain.engine.runtime import resolve_amp
from kernels_bench.measure.trainer_run import merge, synthetic_data, train_for_steps

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


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    profile = _profile(args)
    sizes = dict(PROFILES[profile])
    model = args.model or sizes["model"]
    knobs = sizes["knobs"] if model == sizes["model"] else {}
    steps = args.steps or sizes["steps"]
    fast = _fast_settings(args, device)
    study = StepSettings()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kernels_bench_e2e_"))
    try:
        data = synthetic_data(workdir / "synthetic", image_size=sizes["image_size"], classes=sizes["classes"],
                              per_class=sizes["per_class"], test_per_class=sizes["test_per_class"])
        # model-only first: a finished trainer's pipeline threads (DALI's) must not share the cores with it;
        # it runs under the backend flags (TF32, cudnn.benchmark) the Trainer sets for itself
        apply_backend_settings(device)
        step = SyntheticTrainStep(model, knobs, fast, num_classes=sizes["classes"], batch_size=sizes["batch"],
                                  image_size=sizes["image_size"], device=device)
        warmup = 3 if fast.compile else 2
        timing = time_calls(step, device, warmup=warmup, repeats=max(3, steps // sizes["log_every"]),
                            calls_per_repeat=sizes["log_every"])
        model_only = sizes["batch"] / timing.median_s
        model_only_case = {"path": "fast", "kind": "model_only", "model": model, "knobs": knobs, "settings": fast.label,
                           "backend": None, "batch_size": sizes["batch"],
                           "steps": warmup + len(timing.seconds) * sizes["log_every"],
                           "images_per_s": round(model_only, 2), "load_average": load_average()}
        del step
        gc.collect()
        if fast.compile:  # cold: the first compilation in this process; warm: the same graph again (caches hit)
            model_only_case["compile_cold_s"] = round(max(0.0, timing.warmup_s - warmup * timing.median_s), 2)
            again = SyntheticTrainStep(model, knobs, fast, num_classes=sizes["classes"], batch_size=sizes["batch"],
                                       image_size=sizes["image_size"], device=device)
            warm = time_calls(again, device, warmup=warmup, repeats=1, calls_per_repeat=1)
            model_only_case["compile_warm_s"] = round(max(0.0, warm.warmup_s - warmup * timing.median_s), 2)
            del again
            gc.collect()
        print(f"e2e model-only: {model_only:,.1f} images/s", flush=True)
        cases = []
        for path, settings, backend in (("study", study, "reference"), ("fast", fast, "auto")):
            trainer = train_for_steps(merge({"data": data}, _sections(model, knobs, settings, backend, sizes, steps)),
                                      workdir / f"run_{path}", args.device)
            results = trainer.results
            cases.append({"path": path, "kind": "trainer", "model": model, "knobs": knobs, "settings": settings.label,
                          "backend": results["backend"], "batch_size": sizes["batch"], "steps": results["steps"],
                          "images_per_s": round(results["images_per_s"], 2), "wall_time_s": round(results["wall_time_s"], 2),
                          "load_average": load_average()})
            print(f"e2e trainer {path} ({results['backend']}): {results['images_per_s']:,.1f} images/s", flush=True)
            del trainer
            gc.collect()
        cases = [cases[1], cases[0], model_only_case]  # fast trainer, study trainer, model-only
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    fast_rate, study_rate = cases[0]["images_per_s"], cases[1]["images_per_s"]
    ratio = fast_rate / model_only
    return {"cases": cases, "result": {
        "profile": profile,
        "fast_settings": {"channels_last": fast.channels_last, "amp": fast.amp, "compile": fast.compile},
        "e2e_vs_model_only": round(ratio, 3),
        "fast_vs_study": round(fast_rate / study_rate, 3),
        "goals": {"e2e_vs_model_only_ge_0.95": {"measured": round(ratio, 3), "met": ratio >= 0.95}},
        "note": ("fast path: data.backend auto, channels_last, amp/compile as in fast_settings (on a CPU without native "
                 "bf16, autocast to bf16 is emulated and slower, so auto leaves it off); study path: reference "
                 "pipeline, fp32, eager, NCHW"),
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
