"""What a resumed run may change and what it keeps: a changed training setting is refused, an allowed change is
recorded with its step; TensorBoard keeps the points logged before the resume; images/s and wall time cover the
whole run; the closing summary names the run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import fasttrain.engine.trainer
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.rundir import RunDir
from tiny_runs import STEPS_PER_EPOCH, epoch_records, run_in_process, snapshot, step_records, tiny_args

# Two epochs, stopped after the first (max_steps), results.json removed: an unfinished run with a checkpoint at step 8.
TWO_EPOCHS = ("train.epochs=2", "log.tensorboard=true")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("resume_data") / "synthetic"


def stopped_after_one_epoch(data_root: Path, run: Path, *extra: str) -> list[str]:
    """Train epoch 1 of a 2-epoch run into `run`, leave it unfinished; returns the arguments of its resume."""
    run_in_process(tiny_args(data_root, run, *TWO_EPOCHS, "train.max_steps=8", *extra), check=True)
    RunDir(run).results.unlink()
    return tiny_args(data_root, run, *TWO_EPOCHS, *extra) + ["--resume", "auto"]


def one_line_error(outcome) -> str:
    lines = outcome.stderr.strip().splitlines()
    assert outcome.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), outcome
    return lines[0]


def test_resume_with_changed_training_settings_is_refused_listing_each_and_touches_nothing(data_root, tmp_path):
    run = tmp_path / "run"
    resume = stopped_after_one_epoch(data_root, run)
    before = snapshot(run)
    refused = run_in_process(resume + ["--set", "optim.lr=0.5", "--set", "train.seed=3", "--set", "log.every_steps=2"])
    line = one_line_error(refused)
    assert "changed config: optim.lr 0.05 → 0.5; train.seed 0 → 3;" in line, line
    assert "log.every_steps" not in line  # allowed: listed only among the refused ones
    assert snapshot(run) == before
    assert not RunDir(run).config_changes.exists()


def test_extending_epochs_under_cosine_is_refused_with_the_reason(data_root, tmp_path):
    run = tmp_path / "run"
    resume = stopped_after_one_epoch(data_root, run)
    line = one_line_error(run_in_process(resume + ["--set", "train.epochs=3"]))
    assert "train.epochs 2 → 3 (under sched.name = 'cosine' the lr of every step depends on train.epochs" in line


def test_allowed_changes_are_recorded_with_their_step_and_the_run_equals_one_trained_with_the_new_config(data_root,
                                                                                                        tmp_path):
    constant = ("sched.name=constant",)
    run, straight = tmp_path / "run", tmp_path / "straight"
    resume = stopped_after_one_epoch(data_root, run, *constant)
    first_config = RunDir(run).config.read_text()
    changed = run_in_process(resume + ["--set", "train.epochs=3", "--set", "ckpt.keep=1"], check=True)
    assert "config: changed at this resume, from step 8 on: ckpt.keep 3 → 1; train.epochs 2 → 3; " \
           "train.max_steps 8 → 0" in changed.stdout
    records = [json.loads(line) for line in RunDir(run).config_changes.read_text().splitlines()]
    assert [(r["step"], r["changes"]) for r in records] == [
        (8, {"ckpt.keep": [3, 1], "train.epochs": [2, 3], "train.max_steps": [8, 0]})]
    config = RunDir(run).config.read_text()
    assert config != first_config and "epochs = 3" in config and "keep = 1" in config

    run_in_process(tiny_args(data_root, straight, "train.epochs=3", "log.tensorboard=true", *constant), check=True)
    assert step_records(run) == step_records(straight)  # extending a constant schedule changes no step
    assert epoch_records(run) == epoch_records(straight)
    assert len(ckpt_io.list_checkpoints(RunDir(run).checkpoints)) == 1


def test_tensorboard_keeps_the_points_logged_at_the_resume_step(data_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run_in_process(stopped_after_one_epoch(data_root, run), check=True)
    assert len(list(RunDir(run).tensorboard.glob("events.out.tfevents.*"))) == 2  # one per process
    events = EventAccumulator(str(RunDir(run).tensorboard), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/val_top1")] == [8, 16]  # epoch 1's exactly once
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 17))
    assert [round(e.value, 5) for e in events.Scalars("epoch/val_top1")] == [
        round(r["val_top1"], 5) for r in epoch_records(run)]


def test_images_per_s_after_a_resume_covers_both_processes(data_root, tmp_path):
    run = tmp_path / "run"
    resumed = run_in_process(stopped_after_one_epoch(data_root, run), check=True)
    final = ckpt_io.load_checkpoint(ckpt_io.list_checkpoints(RunDir(run).checkpoints)[-1])
    # log.every_steps = 1: every step is a timed window of 16 images but each process's first (its warm-up)
    timed = final["metrics"][0]["timed"]
    assert timed["images"] == 2 * (STEPS_PER_EPOCH - 1) * 16 and timed["images_all"] == 2 * STEPS_PER_EPOCH * 16
    results = json.loads(RunDir(run).results.read_text())
    assert results["images_per_s"] == pytest.approx(timed["images"] / timed["seconds"])
    assert f"images/s {results['images_per_s']:.0f}" in resumed.stdout


def test_short_run_summary_names_the_out_dir_has_images_per_s_and_times_the_final_evaluation(data_root, tmp_path,
                                                                                             monkeypatch):
    real_evaluate = fasttrain.engine.trainer.evaluate_variants
    evaluated = []

    def slow_evaluation(*args, **kwargs):  # the real evaluation, made to take a known least time
        evaluated.append(args[1].keys())
        time.sleep(0.6)
        return real_evaluate(*args, **kwargs)

    run = tmp_path / "clothes"
    args = tiny_args(data_root, run, "train.epochs=1", "train.max_steps=3", "log.every_steps=50")
    monkeypatch.setattr(fasttrain.engine.trainer, "evaluate_variants", slow_evaluation)
    done = run_in_process(args, check=True)
    results = json.loads(RunDir(run).results.read_text())
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"done: {run} (resnet18, "), summary
    assert results["images_per_s"] is not None and f"images/s {results['images_per_s']:.0f}" in summary
    assert [list(splits) for splits in evaluated] == [["val"], ["test"]]  # the stop is mid-epoch: final ones only
    assert results["wall_time_s"] >= 2 * 0.6  # the final evaluation is part of the run's wall time
    assert "final evaluation: model on val (32 images)" in done.stdout
    assert "final evaluation: model on test (40 images)" in done.stdout  # no epoch ended: no best weights
