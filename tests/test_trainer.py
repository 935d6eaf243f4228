"""The main job end to end on CPU: short runs, outputs, resume equality, DDP equality, eval, user errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasttrain.rundir import RunDir
from tiny_runs import ROOT, run_cli, step_records, subprocess_env, tiny_args


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_data") / "synthetic"


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in step_records(run_dir)]


def test_short_run_writes_every_output(data_root, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(tiny_args(data_root, out, "train.epochs=2", "log.tensorboard=true", "train.ema=true",
                             "train.ema_decay=0.9"))
    results = json.loads(RunDir(out).results.read_text())
    assert results["status"] == "finished" and results["steps"] == 2 * (128 // 16)
    for key in ("test_top1", "test_top5", "best_val_top1", "best_test_top1", "ema_test_top1", "params", "wall_time_s"):
        assert results[key] is not None, key
    assert 0.0 <= results["test_top1"] <= results["test_top5"] <= 1.0
    records = [json.loads(l) for l in RunDir(out).metrics.read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("val_top1" in r for r in epochs)
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == results["steps"]
    assert {"loss", "lr", "images_per_s", "data_wait_pct", "peak_mem_mb", "grad_norm"} <= set(steps[0])
    assert list(RunDir(out).tensorboard.glob("events.out.tfevents.*")), "TensorBoard event file missing"
    assert RunDir(out).config.is_file() and "[train]" in RunDir(out).config.read_text()
    ckpts = sorted(RunDir(out).checkpoints.glob("ckpt_*.pt"))
    assert ckpts, "no checkpoint"
    state = torch.load(ckpts[-1], weights_only=True)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])
    assert "done:" in proc.stdout and "test top-1" in proc.stdout

    # the eval command on the saved checkpoint reproduces the final model's test accuracy
    ev = run_cli(["eval", "--ckpt", str(ckpts[-1]), "--json"])
    evaluated = json.loads(ev.stdout.strip().splitlines()[-1])
    assert evaluated["top1"] == pytest.approx(results["test_top1"], abs=1e-9)
    assert evaluated["count"] == 40

    # a finished run directory is never overwritten
    again = run_cli(tiny_args(data_root, out, "train.epochs=2"), check=False)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert json.loads(RunDir(out).results.read_text()) == results


def test_same_seed_same_losses_and_interrupted_run_resumes_exactly(data_root, tmp_path):
    full = tmp_path / "full"
    run_cli(tiny_args(data_root, full, "train.epochs=2", "model.dropout=0.2", "train.mixup=0.2"))
    again = tmp_path / "again"
    run_cli(tiny_args(data_root, again, "train.epochs=2", "model.dropout=0.2", "train.mixup=0.2"))
    assert step_losses(full) == step_losses(again)

    # stop after 5 steps (mid-epoch), then resume with the same command
    part = tmp_path / "part"
    run_cli(tiny_args(data_root, part, "train.epochs=2", "model.dropout=0.2", "train.mixup=0.2", "train.max_steps=5",
                      "ckpt.every_steps=5"))
    RunDir(part).results.unlink()  # a max_steps stop is a finished run; make it a stopped one
    run_cli(tiny_args(data_root, part, "train.epochs=2", "model.dropout=0.2", "train.mixup=0.2") + ["--resume", "auto"])
    assert step_losses(part) == step_losses(full)
    final_full = torch.load(sorted(RunDir(full).checkpoints.glob("*.pt"))[-1], weights_only=True)["model"]
    final_part = torch.load(sorted(RunDir(part).checkpoints.glob("*.pt"))[-1], weights_only=True)["model"]
    assert all(torch.equal(final_full[k], final_part[k]) for k in final_full)


@pytest.mark.dist
def test_two_process_ddp_matches_one_process(data_root, tmp_path):
    # augmentation off and GroupNorm: only sharding and gradient averaging are under test
    common = ["train.epochs=1", "data.augment=none", "data.hflip=0.0", "model.norm=gn", "train.max_steps=4"]
    single = tmp_path / "single"
    run_cli(tiny_args(data_root, single, *common))
    double = tmp_path / "double"
    args = tiny_args(data_root, double, *common)
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fasttrain", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(sorted(RunDir(single).checkpoints.glob("*.pt"))[-1], weights_only=True)
    b = torch.load(sorted(RunDir(double).checkpoints.glob("*.pt"))[-1], weights_only=True)
    assert b["world_size"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    la, lb = step_losses(single), step_losses(double)
    assert [s for s, _ in la] == [s for s, _ in lb]
    assert [l for _, l in la] == pytest.approx([l for _, l in lb], rel=1e-4)


@pytest.mark.dist
def test_torchrun_user_error_is_printed_once_and_every_rank_fails(data_root, tmp_path):
    # the error comes after the process group is up (resume), as errors in a real multi-GPU run do
    args = tiny_args(data_root, tmp_path / "err", "train.epochs=1") + ["--resume", str(tmp_path / "missing.pt")]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fasttrain", *args], cwd=ROOT, capture_output=True, text=True, env=subprocess_env(),
                          timeout=600)
    assert proc.returncode != 0
    printed = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert len(printed) == 1 and "checkpoint not found" in printed[0], proc.stderr[-3000:]
    # torchrun's failure table: the first rank to fail exits 2; torchrun then stops the other, which may still
    # exit 2 itself or be terminated (SIGTERM) first — a race on a loaded machine, not a second error message
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr[-3000:]


@pytest.mark.slow
def test_compiled_quickstart_steps(data_root, tmp_path):
    out = tmp_path / "compiled"
    run_cli(tiny_args(data_root, out, "train.epochs=1", "train.max_steps=3", "compile.mode=default",
                      "train.deterministic=false"))
    results = json.loads(RunDir(out).results.read_text())
    assert results["steps"] == 3


def test_quickstart_three_steps_eager(tmp_path):
    # the README's first command, cut to 3 steps, on its own config and data layout
    out = tmp_path / "qs"
    root = tmp_path / "qsdata"
    run_cli(["--cfg", "configs/quickstart.toml", "--out", str(out), "--set", f"data.root=\"{root}\"",
             "--set", "train.max_steps=3", "--set", "log.progress=false"])
    assert json.loads(RunDir(out).results.read_text())["steps"] == 3


@pytest.mark.parametrize("extra, fragment", [
    (["--set", "train.batch_size=0"], "[train] batch_size must be an integer >= 1, got 0"),
    (["--set", "model.name=resnet19"], "resnet19"),
    (["--set", "model.cardinality=8"], "cardinality"),
    (["--set", "train.device=cuda"], "no CUDA device"),
    (["--resume", "/nonexistent/ckpt.pt"], "checkpoint not found"),
])
def test_user_errors_are_one_line_exit_2(data_root, tmp_path, extra, fragment):
    if fragment == "no CUDA device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "err"
    proc = run_cli(tiny_args(data_root, out, "train.epochs=1") + extra, check=False)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_missing_tiny_imagenet_names_the_prepare_command(tmp_path):
    proc = run_cli(["--cfg", "configs/resnet18.toml", "--out", str(tmp_path / "r"),
                    "--set", f"data.root=\"{tmp_path / 'nowhere'}\""], check=False)
    assert proc.returncode == 2
    assert "python -m fasttrain.data prepare --source tiny-imagenet" in proc.stderr and "--download" in proc.stderr
    assert not (tmp_path / "r").exists()
