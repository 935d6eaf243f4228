"""Real data: scikit-learn's digits as an ImageFolder tree of JPEGs; every new option trains, resumes exactly and evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from digits_data import write_digits_imagefolder
from fasttrain.data.pipelines.backend_choice import dali_importable
from tiny_runs import ROOT, final_weights, run_in_process, same_weights, step_records

# 1,151 train / 287 val / 359 test images of 32 px; a 0.125-width ResNet, batch 64: 17 steps per epoch.
DIGITS = [
    "data.source=imagefolder", "data.image_size=32", "data.prepare_workers=1", "model.name=resnet18",
    "model.width=0.125", "model.layers=[1,1,1,1]", "train.batch_size=64", "train.amp=off", "train.deterministic=true",
    "log.every_steps=1", "log.progress=false", "log.tensorboard=false",
]
needs_dali = pytest.mark.skipif(not dali_importable(), reason="needs nvidia-dali")


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    return write_digits_imagefolder(tmp_path_factory.mktemp("digits") / "digits")


def digits_args(root: Path, out: Path, *sets: str) -> list[str]:
    args = ["--cfg", str(ROOT / "configs" / "quickstart.toml"), "--out", str(out), "--set", f'data.root="{root}"']
    for item in DIGITS + list(sets):
        args += ["--set", item]
    return args


def train_stop_resume(root: Path, tmp_path: Path, *sets: str, epochs: int = 2, stop_at: int = 20) -> Path:
    """Train `epochs` epochs straight, and again stopped at step `stop_at` (mid-epoch) and resumed with the
    same command; the per-step numbers and final weights must match. Returns the straight run's dir."""
    full, part = tmp_path / "full", tmp_path / "part"
    common = (f"train.epochs={epochs}", *sets)
    run_in_process(digits_args(root, full, *common), check=True)
    run_in_process(digits_args(root, part, *common, f"train.max_steps={stop_at}", f"ckpt.every_steps={stop_at}"), check=True)
    (part / "results.json").unlink()  # a max_steps stop counts as finished; make it a stopped run
    run_in_process(digits_args(root, part, *common) + ["--resume", "auto"], check=True)
    assert step_records(part) == step_records(full)
    assert same_weights(final_weights(part), final_weights(full))
    return full


def evaluate_cli(run_dir: Path, *extra: str) -> dict:
    newest = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))[-1]
    outcome = run_in_process(["eval", "--ckpt", str(newest), "--split", "test", "--json", *extra], check=True)
    return json.loads(outcome.stdout.strip().splitlines()[-1])


def test_erasing_progressive_linear_train_resume_and_evaluate_on_digits(digits_root, tmp_path):
    sets = ("data.backend=torch", "data.erasing=0.5", "data.progressive_start_size=16", "data.progressive_end_epoch=1",
            "sched.name=linear", "eval.tta=flip")
    full = train_stop_resume(digits_root, tmp_path, *sets, stop_at=10)
    results = json.loads((full / "results.json").read_text())
    flipped, plain = evaluate_cli(full), evaluate_cli(full, "--tta", "none")
    assert flipped["tta"] == "flip" and flipped["count"] == plain["count"] == 359
    assert flipped["top1"] == pytest.approx(results["test_top1"])  # the trainer's test figure used the run's TTA
    assert flipped["loss"] != plain["loss"]


OPTIONS = {
    "randaugment": ("data.backend=dali", "data.augment=randaugment", "data.randaugment_n=2", "data.randaugment_m=12"),
    "trivialaugment": ("data.backend=dali", "data.augment=trivialaugment"),
    "erasing-dali": ("data.backend=dali", "data.erasing=0.5"),
    "progressive-dali": ("data.backend=dali", "data.progressive_start_size=16", "data.progressive_end_epoch=1"),
    "policy-reference": ("data.backend=reference", "data.loader_workers=0", "data.augment=trivialaugment",
                         "data.erasing=0.25"),
    "linear": ("data.backend=torch", "sched.name=linear", "sched.warmup_epochs=0.5"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_trains_resumes_exactly_and_evaluates_on_digits(digits_root, tmp_path, name):
    if "data.backend=dali" in OPTIONS[name] and not dali_importable():
        pytest.skip("needs nvidia-dali")
    full = train_stop_resume(digits_root, tmp_path, *OPTIONS[name])
    assert evaluate_cli(full)["count"] == 359
