"""What a run decides at its start, and says: train.amp "auto" on a CPU by measuring, OpenMP's waiting on a busy
machine, the commands the CLI knows."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import fasttrain.__main__ as cli
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.engine.runtime import choose_cpu_amp, measure_cpu_amp
from fasttrain.models import create_model
from fasttrain.rundir import RunDir
from tiny_runs import ROOT, run_cli, run_in_process, subprocess_env, tiny_args

AMP_LINE = re.compile(r"train\.amp auto on this CPU, measured on the model at its batch: fp32 (\d+) images/s, "
                      r"bf16 (\d+) images/s \(([\d.]+)x\) → (bf16|fp32 \(amp off\))")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("start_data") / "synthetic"


def test_amp_auto_on_cpu_is_measured_on_the_model_and_a_resume_keeps_the_choice(data_root, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(data_root, run, "train.epochs=2", "train.amp=auto", "train.max_steps=8")
    first = run_in_process(args, check=True)
    found = AMP_LINE.search(first.stdout)
    assert found, first.stdout
    fp32, bf16, choice = int(found[1]), int(found[2]), found[4]
    if bf16 != fp32:  # (figures equal once rounded: either choice is the faster one)
        assert choice == ("bf16" if bf16 > fp32 else "fp32 (amp off)")
    chosen = "bf16" if choice == "bf16" else "off"
    assert f"| amp {chosen} |" in first.stdout
    assert ckpt_io.load_checkpoint(ckpt_io.list_checkpoints(RunDir(run).checkpoints)[-1])["amp"] == chosen

    RunDir(run).results.unlink()
    resumed = run_in_process(args[:-2] + ["--set", "train.max_steps=0", "--resume", "auto"], check=True)
    assert not AMP_LINE.search(resumed.stdout)  # the precision of the steps taken is kept, not measured again
    assert f"train.amp auto: {'bf16' if chosen == 'bf16' else 'fp32 (amp off)'}, as the resumed run was trained" \
        in resumed.stdout and f"| amp {chosen} |" in resumed.stdout


def test_measuring_amp_leaves_the_model_its_gradients_and_the_random_streams_alone():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, width=0.125, layers=[1, 1, 1, 1], dropout=0.5)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    figures = measure_cpu_amp(model, batch=8, image_size=32, num_classes=4, channels_last=True, budget_s=0.2)
    assert set(figures) == {"off", "bf16"} and all(v > 0 for v in figures.values())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # BN running stats included
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_faster_measured_precision_is_chosen_and_both_figures_are_said():
    assert choose_cpu_amp({"off": 68.0, "bf16": 47.0}) == (
        "off", "train.amp auto on this CPU, measured on the model at its batch: fp32 68 images/s, bf16 47 images/s "
               "(0.69x) → fp32 (amp off)")
    assert choose_cpu_amp({"off": 100.0, "bf16": 160.0})[0] == "bf16"


# ---- OpenMP waiting on a busy machine ----
def test_busy_machine_gets_passive_openmp_waiting_set_before_torch_is_imported(data_root, tmp_path):
    hook = ("import atexit, os, sys\n"
            "os.getloadavg = lambda: (64.0, 64.0, 64.0)\n"
            "atexit.register(lambda: print('at exit OMP_WAIT_POLICY =', os.environ.get('OMP_WAIT_POLICY')))\n")
    code = (hook + "from fasttrain.__main__ import main\nfrom fasttrain.errors import run_cli\n"
            "raise SystemExit(run_cli(lambda: main(sys.argv[1:])))")
    env = subprocess_env()
    env.pop("OMP_WAIT_POLICY", None)
    args = tiny_args(data_root, tmp_path / "run", "train.epochs=1", "train.max_steps=1")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    cores = len(os.sched_getaffinity(0))
    assert lines[0] == (f"busy machine: 1-minute load 64.0 on {cores} usable cores; OpenMP threads will sleep while "
                        f"they wait (OMP_WAIT_POLICY=PASSIVE set for this run; set OMP_WAIT_POLICY=ACTIVE to have them spin)")
    assert lines[-1] == "at exit OMP_WAIT_POLICY = PASSIVE"


@pytest.mark.parametrize("load, policy, said, kept", [
    (64.0, None, "OpenMP threads spin while they wait, which can slow training several times here: start with "
                 "OMP_WAIT_POLICY=PASSIVE", None),  # torch already imported: too late to change, only said
    (64.0, "ACTIVE", "OMP_WAIT_POLICY=ACTIVE makes OpenMP threads spin while they wait", "ACTIVE"),
    (64.0, "PASSIVE", "OMP_WAIT_POLICY=PASSIVE is set, so OpenMP threads sleep while they wait", "PASSIVE"),
    (0.0, None, None, None),
])
def test_openmp_advice_follows_the_load_and_the_users_own_setting(monkeypatch, load, policy, said, kept):
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (load, load, load))
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    lines = []
    cli.quiet_openmp_on_a_busy_machine(log=lines.append)
    assert (len(lines) == 1 and said in lines[0]) if said else lines == []
    assert cli.os.environ.get("OMP_WAIT_POLICY") == kept


# ---- the CLI's commands ----
def test_help_lists_every_command_and_a_mistyped_one_gets_the_nearest():
    shown = run_cli(["--help"]).stdout
    for command in ("eval", "predict", "export"):
        assert re.search(rf"^  {command} +\S", shown, re.M), shown
    typo = run_cli(["predcit", "--ckpt", "x.pt"], check=False)
    assert typo.returncode == 2
    assert typo.stderr.strip() == ("error: unknown command 'predcit'; did you mean 'predict'? "
                                   "commands: train, eval, predict, export (see python -m fasttrain --help)")
