"""Time to accuracy (compile/warm-up apart) from metrics.jsonl, in results.json, and the final test scalars in TensorBoard."""

from __future__ import annotations

import json

import pytest

from fasttrain.rundir import RunDir
from tiny_runs import run_in_process, tiny_args

BATCH = 10


def step(step: int, epoch: int, seconds: float, steps: int) -> dict:
    return {"kind": "step", "step": step, "epoch": epoch, "images_per_s": steps * BATCH / seconds}


def test_compile_is_the_first_windows_excess_over_the_median_window():
    from fasttrain.engine.time_to_accuracy import compile_seconds, seconds_to_val_top1, window_seconds

    # 10 steps per epoch, logged every 4: windows of 4, 4, 2 (the epoch ends at 10; the clock restarts), 4, 4, 2
    records = [step(4, 0, 4 * 0.1 + 3.0, 4), step(8, 0, 0.4, 4), {"kind": "epoch", "epoch": 1, "step": 10,
                                                                  "wall_time_s": 4.2, "val_top1": 0.6},
               step(12, 1, 0.2, 2), step(16, 1, 0.44, 4), step(20, 1, 0.4, 4),
               {"kind": "epoch", "epoch": 2, "step": 20, "wall_time_s": 5.3, "val_top1": 0.85}]
    assert [steps for steps, _ in window_seconds(records, BATCH)] == [4, 4, 2, 4, 4]
    assert compile_seconds(records, BATCH) == pytest.approx(3.0)
    levels = seconds_to_val_top1(records, 3.0, levels=(0.5, 0.8, 0.9))
    assert levels == {"0.5": pytest.approx(1.2), "0.8": pytest.approx(2.3), "0.9": None}
    assert compile_seconds(records[:1], BATCH) is None  # one window: nothing to compare it with


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny 2-epoch run with TensorBoard on, logged every 2 steps (8 steps per epoch)."""
    tmp = tmp_path_factory.mktemp("tta")
    out = tmp / "run"
    run_in_process(tiny_args(tmp / "data", out, "train.epochs=2", "log.tensorboard=true", "log.every_steps=2"),
                   check=True)
    return out


def test_results_hold_time_to_accuracy(finished_run):
    from fasttrain.engine.time_to_accuracy import time_to_accuracy

    results = json.loads(RunDir(finished_run).results.read_text())
    records = [json.loads(line) for line in RunDir(finished_run).metrics.read_text().splitlines()]
    assert results["compile_s"] is not None and results["compile_s"] >= 0
    assert results["seconds_to_val_top1"] == time_to_accuracy(records, 16)["seconds_to_val_top1"]
    assert set(results["seconds_to_val_top1"]) == {"0.5", "0.8", "0.9", "0.95"}


def test_tensorboard_gets_the_final_test_scalars(finished_run):
    """Issue 20 item 14: TensorBoard had no test scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = json.loads(RunDir(finished_run).results.read_text())
    events = EventAccumulator(str(RunDir(finished_run).tensorboard))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for key in ("test_top1", "test_top5"):
        assert f"final/{key}" in scalars, scalars
        assert events.Scalars(f"final/{key}")[-1].value == pytest.approx(results[key], abs=1e-6)
