"""Time to accuracy (compile/warm-up apart) from metrics.jsonl, in results.json, and the final test scalars in TensorBoard."""

from __future__ import annotations

import json

import pytest

from fasttrain.engine.time_to_accuracy import compile_seconds, seconds_to_val_top1, time_to_accuracy, window_seconds
from fasttrain.rundir import RunDir
from tiny_runs import run_in_process, tiny_args

BATCH = 10


def step(step: int, epoch: int, seconds: float, steps: int) -> dict:
    return {"kind": "step", "step": step, "epoch": epoch, "images_per_s": steps * BATCH / seconds}


def test_compile_is_the_first_windows_excess_over_the_median_window():
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


def test_results_hold_time_to_accuracy_and_tensorboard_the_test_scalars(tmp_path):
    """Issue 20 item 14: TensorBoard had no test scalars; issue 19: results.json gives time to accuracy."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_in_process(tiny_args(tmp_path / "data", out, "train.epochs=2", "log.tensorboard=true", "log.every_steps=2"),
                   check=True)
    results = json.loads(RunDir(out).results.read_text())
    records = [json.loads(line) for line in RunDir(out).metrics.read_text().splitlines()]
    assert results["compile_s"] is not None and results["compile_s"] >= 0
    expected = time_to_accuracy(records, 16)
    assert results["seconds_to_val_top1"] == expected["seconds_to_val_top1"]
    assert set(results["seconds_to_val_top1"]) == {"0.5", "0.8", "0.9", "0.95"}

    events = EventAccumulator(str(RunDir(out).tensorboard))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for key in ("test_top1", "test_top5"):
        assert f"final/{key}" in scalars, scalars
        assert events.Scalars(f"final/{key}")[-1].value == pytest.approx(results[key], abs=1e-6)
