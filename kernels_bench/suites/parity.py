"""Accuracy parity: each family trained for a fixed number of steps on the learnable synthetic set by the
fast path (fastest pipeline + channels_last + bf16 AMP + torch.compile) and by the study's path (reference
pipeline, fp32, eager, NCHW), over several seeds; plus forward parity of one batch, fast vs fp32 eager.

Accuracy passes when |Δ mean test accuracy| ≤ max(1 point, 2 × the larger of the two seed std's).
Forward passes when the relative L2 error of the bf16 logits is within the model's own noise floor
scaled to bf16: the fp32 model's distance from the same model in float64 (its rounding error,
which grows with depth), times 2^16 (bf16 rounds 2^16 times coarser than fp32: 8 vs 24 significand
bits). So a deep VGG is judged by its own sensitivity, not by a constant. `--forward-only` runs the
forward check alone at the profile's size (random weights), the GPU check's full-size parity stage.
Any failed family makes the exit status 1.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from fasttrain.engine.evaluate import evaluate
from kernels_bench.core import merge, synthetic_data, train_for_steps

FAMILIES = {"vgg": "vgg19", "resnet": "resnet18", "resnext": "resnext50_32x4d", "t2t": "t2t_vit_t_14"}
# reduced widths for CPU; t2t keeps 64×64 input (the trainer has no img_size knob) with coarser soft splits
REDUCED_KNOBS = {
    "vgg": {"width": 0.125, "dropout": 0.0},
    "resnet": {"width": 0.125, "layers": [1, 1, 1, 1]},
    "resnext": {"width": 0.25, "layers": [1, 1, 1, 1]},
    "t2t": {"embed_dim": 64, "depth": 2, "num_heads": 2, "t2t_strides": [4, 2, 2]},
}
PROFILES = {  # image side for CNNs, classes, train images per class, batch, steps, seeds
    "full": {"cnn_size": 64, "classes": 20, "per_class": 400, "batch": 128, "steps": 150, "seeds": 3},
    "quick": {"cnn_size": 32, "classes": 10, "per_class": 60, "batch": 16, "steps": 20, "seeds": 3},
    "smoke": {"cnn_size": 32, "classes": 4, "per_class": 16, "batch": 8, "steps": 3, "seeds": 2},
}
BF16_OVER_FP32_ROUNDING = 2.0 ** 16  # unit roundoff 2^-8 (bf16) over 2^-24 (fp32)
# optimiser per family as in the study's runs (Adam for VGG, SGD for ResNet/ResNeXt); AdamW for the ViT
OPTIM = {"vgg": {"name": "adam", "lr": 5e-4}, "resnet": {"lr": 0.05}, "resnext": {"lr": 0.05},
         "t2t": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("parity suite")
    group.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    group.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    group.add_argument("--seeds", type=int, default=None, help="seeds per path (default 3)")
    group.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                       help="torch.compile in the fast path; auto: on for CUDA, off on CPU (compilation would not fit the budget)")
    group.add_argument("--forward-only", action="store_true",
                       help="only the forward check, on random weights at the profile's size (full size on a GPU)")
    group.add_argument("--workdir", type=Path, default=None, help="synthetic set, cache and run dirs (default: a temp dir)")


def accuracy_passes(fast_acc: float, study_acc: float, fast_std: float, study_std: float) -> bool:
    """The issue's rule: |Δ accuracy| ≤ max(1 point, 2 × std), std being the larger of the two paths'."""
    return abs(fast_acc - study_acc) <= max(0.01, 2 * max(fast_std, study_std)) + 1e-12


def relative_error(fast: torch.Tensor, reference: torch.Tensor) -> float:
    return float((fast.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12))


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def forward_parity(model: torch.nn.Module, images: torch.Tensor, compiled: bool, device: torch.device) -> dict:
    """Logits of the plain fp32 eager NCHW model (TF32 off) vs a copy run the fast way (bf16 autocast,
    channels_last, compiled if asked), on one batch in eval mode, judged against the noise floor."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        reference_model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            reference = reference_model(images.contiguous())
            exact = copy.deepcopy(reference_model).double()(images.double().contiguous())
            figures = {"noise_floor": relative_error(reference, exact)}
            if device.type == "cuda":  # TF32's own distance, for the record (the reference above has it off)
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
                figures["tf32_rel_err"] = relative_error(reference_model(images.contiguous()), reference)
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            del exact
            fast_model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
            forward = torch.compile(fast_model) if compiled else fast_model
            with torch.autocast(device.type, dtype=torch.bfloat16):
                fast = forward(images.contiguous(memory_format=torch.channels_last))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    figures["rel_err"] = relative_error(fast, reference)
    figures["tolerance"] = figures["noise_floor"] * BF16_OVER_FP32_ROUNDING
    figures["passed"] = figures["rel_err"] <= figures["tolerance"]
    return figures


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    profile = "smoke" if getattr(args, "smoke", False) else ("quick" if args.quick and device.type == "cpu" else "full")
    sizes = PROFILES[profile]
    steps = args.steps or sizes["steps"]
    seeds = args.seeds or sizes["seeds"]
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not families or any(f not in FAMILIES for f in families):
        from fasttrain.errors import UserError

        raise UserError(f"unknown --families {args.families!r}; choose from {', '.join(FAMILIES)}")
    if args.forward_only:
        return _forward_only(families, profile, compiled, device)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kernels_bench_parity_"))
    cases = []
    try:
        for family in families:
            knobs = REDUCED_KNOBS[family] if profile != "full" else ({"dropout": 0.0} if family == "vgg" else {})
            size = 64 if family == "t2t" else sizes["cnn_size"]
            data = synthetic_data(workdir / f"synthetic{size}", image_size=size, classes=sizes["classes"],
                                  per_class=sizes["per_class"], test_per_class=max(2, sizes["per_class"] // 4))
            common = {"data": {**data, "augment": "pad_crop", "loader_workers": 0},
                      "model": {"name": FAMILIES[family], **knobs}, "optim": OPTIM[family],
                      "train": {"batch_size": sizes["batch"], "max_steps": steps, "epochs": 1000},
                      "log": {"every_steps": max(1, steps // 3)}, "sched": {"name": "constant"}}
            paths = {
                "fast": {"data": {"backend": "auto"}, "train": {"channels_last": True, "amp": "bf16"},
                         "compile": {"mode": "default" if compiled else "off"}},
                "study": {"data": {"backend": "reference"}, "train": {"channels_last": False, "amp": "off"},
                          "compile": {"mode": "off"}},
            }
            finals = {"fast": [], "study": []}
            forward = None
            for path, settings in paths.items():
                for seed in range(seeds):
                    trainer = train_for_steps(merge(common, settings, {"train": {"seed": seed}}),
                                              workdir / f"{family}_{path}_{seed}", args.device)
                    finals[path].append(evaluate(trainer.model, trainer.eval_pipes["test"], trainer.info, trainer.amp))
                    if path == "study" and seed == 0:
                        images, _ = next(iter(trainer.eval_pipes["test"]))
                        forward = forward_parity(trainer.model, images, compiled, device)
                    del trainer
            acc = {p: [f["top1"] for f in finals[p]] for p in finals}
            loss = {p: [f["loss"] for f in finals[p]] for p in finals}
            case = {"family": family, "model": FAMILIES[family], "knobs": knobs, "steps": steps, "seeds": seeds,
                    "batch_size": sizes["batch"], "image_size": size, "classes": sizes["classes"],
                    "test_images": finals["fast"][0]["count"],
                    "fast_acc": round(statistics.mean(acc["fast"]), 4), "fast_std": round(_std(acc["fast"]), 4),
                    "study_acc": round(statistics.mean(acc["study"]), 4), "study_std": round(_std(acc["study"]), 4),
                    "fast_loss": round(statistics.mean(loss["fast"]), 4), "fast_loss_std": round(_std(loss["fast"]), 4),
                    "study_loss": round(statistics.mean(loss["study"]), 4), "study_loss_std": round(_std(loss["study"]), 4),
                    "fast_accs": [round(a, 4) for a in acc["fast"]], "study_accs": [round(a, 4) for a in acc["study"]]}
            case["delta_acc"] = round(case["fast_acc"] - case["study_acc"], 4)
            case["accuracy_passed"] = accuracy_passes(statistics.mean(acc["fast"]), statistics.mean(acc["study"]),
                                                      _std(acc["fast"]), _std(acc["study"]))
            case["forward_rel_err"] = round(forward["rel_err"], 6)
            case["forward_noise_floor"] = float(f"{forward['noise_floor']:.3e}")
            case["forward_tolerance"] = round(forward["tolerance"], 6)
            case["forward_passed"] = forward["passed"]
            case["passed"] = case["accuracy_passed"] and case["forward_passed"]
            cases.append(case)
            print(f"parity {family}: fast {case['fast_acc']:.3f}±{case['fast_std']:.3f} vs study "
                  f"{case['study_acc']:.3f}±{case['study_std']:.3f}, forward rel err {forward['rel_err']:.2e} (tolerance {forward['tolerance']:.2e}) → "
                  f"{'pass' if case['passed'] else 'FAIL'}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"cases": cases, "failed": [c["family"] for c in cases if not c["passed"]], "result": {
        "profile": profile, "compile_in_fast_path": compiled,
        "all_passed": all(c["passed"] for c in cases),
        "rule": "accuracy: |fast_acc - study_acc| <= max(0.01, 2 * max(fast_std, study_std)) over seeds (sample std); "
                "forward: relative L2 error of logits (bf16 fast path vs fp32 eager, TF32 off, eval mode) <= "
                "2^16 × noise floor (the fp32 logits' relative distance from the same model in float64)",
        "note": ("fast path: data.backend auto, channels_last, bf16 autocast" + (", torch.compile" if compiled else
                 "; torch.compile omitted (CPU compilation of 4 families × seeds does not fit the run's budget)")
                 + "; study path: reference pipeline (loader_workers 0), fp32, eager, NCHW; accuracy on the held-out "
                 "test split after a fixed number of steps, constant lr, pad-and-crop augmentation"),
    }}


def _forward_only(families: list[str], profile: str, compiled: bool, device: torch.device) -> dict:
    from fasttrain.models import create_model

    cases = []
    for family in families:
        knobs = REDUCED_KNOBS[family] if profile != "full" else {}
        size = 64 if family == "t2t" else PROFILES[profile]["cnn_size"]
        if family == "t2t":
            knobs = {**knobs, "img_size": size}
        torch.manual_seed(0)
        model = create_model(FAMILIES[family], PROFILES[profile]["classes"], **knobs).to(device)
        images = torch.randn(32 if profile == "full" else 8, 3, size, size, device=device)
        found = forward_parity(model, images, compiled, device)
        cases.append({"family": family, "model": FAMILIES[family], "knobs": knobs, "image_size": size,
                      "batch_size": len(images), "compiled": compiled, **{k: (round(v, 8) if isinstance(v, float) else v)
                                                                       for k, v in found.items()}})
        print(f"forward parity {family}: rel err {found['rel_err']:.2e}, noise floor {found['noise_floor']:.2e}, "
              f"tolerance {found['tolerance']:.2e} → {'pass' if found['passed'] else 'FAIL'}", flush=True)
        del model
    return {"cases": cases, "failed": [c["family"] for c in cases if not c["passed"]], "result": {
        "profile": profile, "forward_only": True, "all_passed": all(c["passed"] for c in cases),
        "rule": "relative L2 error of logits (bf16 + channels_last vs fp32 eager NCHW, TF32 off, random weights, eval "
                "mode) <= 2^16 × the fp32 logits' relative distance from float64"}}


def to_markdown(report: dict) -> str:
    result = report["result"]
    if result.get("forward_only"):
        lines = [f"### parity, forward only ({report['device']}, {result['profile']} profile)", "",
                 "| family | model | rel err | noise floor | tolerance | passed |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['family']} | {c['model']} | {c['rel_err']:.2e} | {c['noise_floor']:.2e} | {c['tolerance']:.2e} | "
                  f"{'yes' if c['passed'] else 'NO'} |" for c in report["cases"]]
        return "\n".join(lines + ["", f"- rule: {result['rule']}"]) + "\n"
    lines = [f"### parity ({report['device']}, {result['profile']} profile)", "",
             "| family | model | steps × seeds | fast acc | study acc | Δ acc | fast loss | study loss | forward rel err | passed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['family']} | {c['model']} | {c['steps']} × {c['seeds']} | {c['fast_acc']:.3f} ± {c['fast_std']:.3f} | "
                     f"{c['study_acc']:.3f} ± {c['study_std']:.3f} | {c['delta_acc']:+.3f} | "
                     f"{c['fast_loss']:.3f} ± {c['fast_loss_std']:.3f} | {c['study_loss']:.3f} ± {c['study_loss_std']:.3f} | "
                     f"{c['forward_rel_err']:.2e} | {'yes' if c['passed'] else 'NO'} |")
    lines += ["", f"- rule: {result['rule']}", f"- {result['note']}"]
    return "\n".join(lines) + "\n"
