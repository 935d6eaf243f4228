"""Engine parts in milliseconds: lr schedule, param groups, RNG round trip, the training loss, metrics state and log truncation."""

from __future__ import annotations

import io
import json
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fasttrain.config import OptimConfig, SchedConfig
from fasttrain.data.pipelines.sampling import whole_batches
from fasttrain.engine.checkpoint import capture_rng, restore_rng
from fasttrain.engine.distributed import DistInfo
from fasttrain.engine.metrics import MetricsWriter, TrainMetrics, datasheet_peak_tflops, mfu_pct
from fasttrain.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups, split_batch
from fasttrain.engine.trainer import training_loss
from fasttrain.rundir import RunDir, read_metrics

CPU = torch.device("cpu")
ONE_RANK = DistInfo(0, 1, 0, CPU)


# ---- lr schedule ----
def test_warmup_is_linear_from_the_start_factor():
    cfg = SchedConfig(name="cosine", warmup_epochs=2, warmup_start_factor=0.1)
    factors = [lr_factor(cfg, s, steps_per_epoch=10, total_steps=100, base_lr=1.0) for s in range(21)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[10] == pytest.approx(0.55)
    assert np.allclose(np.diff(factors[:20]), 0.9 / 20)
    assert factors[20] == pytest.approx(1.0)  # warm-up ends where the cosine starts


def test_cosine_decays_every_step_to_the_min_lr_floor():
    cfg = SchedConfig(name="cosine", min_lr=0.01, warmup_epochs=0.0)
    factors = [lr_factor(cfg, s, steps_per_epoch=10, total_steps=100, base_lr=0.1) for s in range(0, 101)]
    assert factors[0] == pytest.approx(1.0)
    assert all(b < a for a, b in zip(factors, factors[1:]))  # a schedule that never decays fails here
    assert factors[50] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: half-way between 1 and the floor
    assert factors[100] == pytest.approx(0.01 / 0.1)  # ends at min_lr, not at 0
    assert lr_factor(cfg, 150, steps_per_epoch=10, total_steps=100, base_lr=0.1) == pytest.approx(0.1)


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    cfg = SchedConfig(name="step", milestones=[3, 6], gamma=0.1, warmup_epochs=0.0)
    at = {epoch: lr_factor(cfg, epoch * 10, steps_per_epoch=10, total_steps=100, base_lr=1.0) for epoch in range(9)}
    assert [at[e] for e in (0, 2)] == [1.0, 1.0]
    assert at[3] == pytest.approx(0.1) and at[5] == pytest.approx(0.1)
    assert at[6] == pytest.approx(0.01) and at[8] == pytest.approx(0.01)
    assert lr_factor(cfg, 29, steps_per_epoch=10, total_steps=100, base_lr=1.0) == 1.0  # last step before epoch 3


def test_scheduler_drives_the_optimizer_lr_down_the_cosine():
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(OptimConfig(lr=0.5), model, lr=0.5)
    scheduler = build_scheduler(SchedConfig(name="cosine", min_lr=0.05, warmup_epochs=0.0), optimizer, steps_per_epoch=5, total_steps=20,
                                base_lr=0.5)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.5) and all(b < a for a, b in zip(lrs, lrs[1:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


# ---- param groups ----
class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 2)


def test_weight_decay_on_weights_only_unless_asked():
    model = ConvNet()
    groups = param_groups(model, weight_decay=0.05, decay_norm_and_bias=False)
    decayed, plain = ({id(p) for p in g["params"]} for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert decayed == {id(model.conv.weight), id(model.head.weight)}
    assert plain == {id(p) for p in (model.conv.bias, model.norm.weight, model.norm.bias, model.head.bias)}
    everything = param_groups(model, weight_decay=0.05, decay_norm_and_bias=True)
    assert len(everything) == 1 and everything[0]["weight_decay"] == 0.05
    assert len(everything[0]["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizer_keeps_the_configured_weight_decay(name):
    model = ConvNet()
    optimizer = build_optimizer(OptimConfig(name=name, weight_decay=0.03), model, lr=0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.03, 0.0]
    assert all(g["lr"] == 0.1 for g in optimizer.param_groups)


def test_weight_decay_shrinks_a_weight_without_gradient_signal():
    weight = torch.nn.Parameter(torch.ones(2, 2))
    model = torch.nn.Module()
    model.weight = weight
    optimizer = build_optimizer(OptimConfig(name="sgd", momentum=0.0, weight_decay=0.1), model, lr=1.0)
    weight.grad = torch.zeros_like(weight)
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((2, 2), 0.9))


# ---- RNG ----
def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_capture_restore_round_trip_through_a_weights_only_checkpoint():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()
    buffer = io.BytesIO()
    torch.save(capture_rng(), buffer)
    first = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    buffer.seek(0)
    restore_rng(torch.load(buffer, weights_only=True))
    assert draws() == first


# ---- the training loss ----
def test_soft_targets_of_one_hot_rows_equal_cross_entropy():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    one_hot = F.one_hot(labels, 5).float()
    assert training_loss(logits, one_hot, 0.3) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    mixed = 0.7 * one_hot + 0.3 * one_hot.flip(0)
    manual = -(mixed * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    assert training_loss(logits, mixed, 0.0) == pytest.approx(manual.item(), rel=1e-6)


def test_hard_labels_use_label_smoothing():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 2, 3, 4])
    smoothed = 0.9 * F.one_hot(labels, 10).float() + 0.1 / 10
    manual = -(smoothed * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    assert training_loss(logits, labels, 0.1) == pytest.approx(manual.item(), rel=1e-6)
    assert training_loss(logits, labels, 0.1) != pytest.approx(training_loss(logits, labels, 0.0).item(), rel=1e-3)


def test_loss_is_computed_in_fp32_from_low_precision_logits():
    logits = torch.randn(4, 10).to(torch.bfloat16)
    assert training_loss(logits, torch.tensor([1, 2, 3, 4]), 0.0).dtype == torch.float32


# ---- metrics ----
def steps_into(metrics: TrainMetrics, losses: list[float], images: int = 8) -> None:
    for i, loss in enumerate(losses):
        metrics.add_step(torch.tensor(loss), torch.tensor(i + 1), images)


def test_metrics_state_dict_round_trip_gives_the_same_epoch_record():
    run = TrainMetrics(ONE_RANK)
    run.start_epoch(fresh=True)
    steps_into(run, [1.0, 2.0, 3.0])
    run.count_skipped(torch.tensor(True))
    state = run.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the checkpoint holds tensors and plain data only
    steps_into(run, [4.0])
    buffer.seek(0)
    resumed = TrainMetrics(ONE_RANK)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.start_epoch(fresh=False)  # a resumed epoch keeps its sums
    steps_into(resumed, [4.0])
    assert resumed.close_epoch() == run.close_epoch() == {"train_loss": 2.5, "train_top1": (1 + 2 + 3 + 1) / 32}
    assert resumed.skipped() == 1
    assert resumed.elapsed_before == state["elapsed_s"] and resumed.wall_time_s() >= state["elapsed_s"]


def test_metrics_of_another_world_size_keep_only_clock_and_skips():
    run = TrainMetrics(ONE_RANK)
    steps_into(run, [5.0])
    state = dict(run.state_dict(), elapsed_s=12.5)
    other = TrainMetrics(ONE_RANK)
    other.load_state_dict(state, sums=False)
    assert other.epoch_sums["steps"] == 0 and other.elapsed_before == 12.5
    assert other.wall_time_s() >= 12.5


def test_first_window_is_left_out_of_the_runs_images_per_s():
    metrics = TrainMetrics(ONE_RANK)
    metrics.start_epoch(fresh=True)
    steps_into(metrics, [1.0])
    first = metrics.close_window()
    # a short run has images/s from its warm-up window alone; once there is more, the warm-up is left out
    assert first["loss"] == 1.0 and first["top1"] == 1 / 8
    assert metrics.images_per_s() == pytest.approx(first["images_per_s"])
    metrics.start_window()
    steps_into(metrics, [3.0, 5.0])
    second = metrics.close_window()
    assert second["loss"] == 4.0  # the window sums restart after each log line
    assert metrics.images_per_s() == pytest.approx(second["images_per_s"])
    assert "mfu_pct" not in second  # no peak on CPU: no MFU


def test_data_wait_share_counts_only_time_in_the_pipeline():
    metrics = TrainMetrics(ONE_RANK)
    metrics.start_window()
    with metrics.waiting_for_data():
        sum(range(200_000))
    sum(range(200_000))
    steps_into(metrics, [1.0])
    share = metrics.close_window()["data_wait_pct"]
    assert 5.0 < share < 95.0


def test_metrics_log_resume_truncates_lines_after_the_checkpoint_step(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False, resume_step=None)
    for step in (1, 2, 3, 4):
        writer.write("step", step, {"loss": float(step)})
    writer.write("epoch", 4, {"epoch": 1})
    writer.close()
    with open(RunDir(tmp_path).metrics, "a") as f:
        f.write('{"kind": "step", "st')  # a line cut by a kill
    resumed = MetricsWriter(tmp_path, tensorboard=False, resume_step=2)
    resumed.write("step", 3, {"loss": 30.0})
    resumed.close()
    assert [(r["kind"], r["step"], r.get("loss")) for r in read_metrics(tmp_path)] == [
        ("step", 1, 1.0), ("step", 2, 2.0), ("step", 3, 30.0)]
    assert all(json.loads(line) for line in RunDir(tmp_path).metrics.read_text().splitlines())


# ---- batch arithmetic, hardware ----
def test_batch_split_and_whole_batches():
    assert split_batch(256, 8, 2) == (32, 16)
    assert whole_batches(1000, 96) == 10
    with pytest.raises(Exception, match="grad_accum 3 does not divide the per-rank batch 32"):
        split_batch(256, 8, 3)


def test_datasheet_peaks_and_mfu():
    assert datasheet_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert datasheet_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert datasheet_peak_tflops("NVIDIA H200") == 989.0
    assert datasheet_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert datasheet_peak_tflops("NVIDIA L40S") == 362.0
    assert datasheet_peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert datasheet_peak_tflops("Tesla V100-SXM2-16GB") is None
    assert mfu_pct(1e9, 1000.0, 1.0) == pytest.approx(100.0)
    assert mfu_pct(1e9, 1000.0, 1.0, devices=4) == pytest.approx(25.0)
    assert math.isclose(mfu_pct(3 * 4.1e9, 10_000, 989.0), 100 * 1.23e14 / 9.89e14)


def test_a_longer_gpu_name_is_matched_before_a_name_it_contains():
    from fasttrain.engine.metrics import DATASHEET_BF16_TFLOPS

    assert datasheet_peak_tflops("NVIDIA H200 NVL") == 835.0  # not the SXM part's 989 (issue 17, GPU-path defect 9)
    assert datasheet_peak_tflops("NVIDIA H100 NVL") == 835.0
    keys = [key for key, _ in DATASHEET_BF16_TFLOPS]
    for i, key in enumerate(keys):
        assert not any(key.lower() in later.lower() for later in keys[i + 1:]), f"{key!r} would shadow a later, longer name"


def test_deterministic_on_cuda_fixes_the_cublas_workspace_and_says_what_it_cannot_guarantee(monkeypatch):
    from fasttrain.config import TrainConfig
    from fasttrain.engine.runtime import configure_backends

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        # no CUDA call is made: the flags and the variable are set before the model computes anything
        note = configure_backends(TrainConfig(deterministic=True), torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark is False
        assert note and "not guaranteed" in note and "\n" not in note
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a user's own choice is kept
        configure_backends(TrainConfig(deterministic=True), torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        assert configure_backends(TrainConfig(deterministic=True), torch.device("cpu")) is None  # CPU: bit-exact
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved[2:]
