"""The Trainer's own step in process: host syncs only on log steps, the [train] knobs reach the step, rank-0 errors,
best_model.pt written after the epoch checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fasttrain.atomic
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.rundir import RunDir
from fasttrain.errors import UserError, run_cli
from tiny_runs import FailingWrites, RUN_THREADS, run_in_process, tiny_args, tiny_trainer


class HostSyncCounter(TorchDispatchMode):
    """Counts aten._local_scalar_dense: every .item()/float()/bool() of a tensor, the op that waits for a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_data") / "synthetic"


@pytest.fixture
def trainer_of(data_root, tmp_path):
    """Build tiny in-process Trainers; the global torch switches they set are put back afterwards."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(RUN_THREADS)
    yield lambda *extra: tiny_trainer(data_root, tmp_path / "run", *extra)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def first_batches(trainer, n: int) -> list:
    trainer.train_pipe.set_epoch(0)
    return [batch for _, batch in zip(range(n), trainer.train_pipe)]


@pytest.mark.parametrize("extra", [(), ("train.grad_clip=1.0", "train.ema=true", "train.mixup=0.2", "train.grad_accum=2")])
def test_no_host_sync_on_steps_that_do_not_log(trainer_of, extra):
    trainer = trainer_of("log.every_steps=4", *extra)
    batches = iter(first_batches(trainer, 4 * trainer.cfg.train.grad_accum))  # fetched first: the pipeline is not under test
    trainer.train_module.train()
    trainer.metrics.start_epoch(fresh=True)
    with HostSyncCounter() as quiet:
        for _ in range(3):
            trainer.step_and_log(batches, epoch=0)
    with HostSyncCounter() as logging:
        trainer.step_and_log(batches, epoch=0)  # step 4 logs
    assert trainer.step == 4
    assert quiet.count == 0
    assert logging.count > 0


def test_train_step_uses_label_smoothing_and_returns_device_tensors(trainer_of):
    trainer = trainer_of("train.label_smoothing=0.4", "train.channels_last=false")
    (images, labels), = first_batches(trainer, 1)
    trainer.train_module.train()
    with torch.no_grad():
        expected = F.cross_entropy(trainer.model(images), labels, label_smoothing=0.4)
    loss, correct, n, grad_norm = trainer.train_step(iter([(images, labels)]))
    assert loss.device == correct.device == trainer.device and grad_norm is None and n == labels.numel()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def parameter_change(trainer, batch) -> float:
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_module.train()
    trainer.train_step(iter([batch]))
    return torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(trainer.model.parameters(), before))).item()


def test_grad_clip_bounds_the_update(trainer_of):
    plain = ["optim.momentum=0.0", "optim.weight_decay=0.0", "optim.lr=1.0", "sched.name=constant"]
    free = trainer_of(*plain)
    batch = first_batches(free, 1)[0]
    unclipped = parameter_change(free, batch)
    clipped = parameter_change(trainer_of(*plain, "train.grad_clip=0.01"), batch)
    assert clipped == pytest.approx(0.01, rel=1e-3)  # plain SGD, lr 1: the update is the clipped gradient
    assert unclipped > 10 * clipped


def test_trainer_optimizer_carries_the_configured_weight_decay(trainer_of):
    trainer = trainer_of("optim.weight_decay=0.0123")
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.0123
    assert trainer.plan.steps_per_epoch * trainer.cfg.train.grad_accum == len(trainer.train_pipe)


def test_user_error_is_printed_by_rank_zero_only(monkeypatch, capsys):
    def fails():
        raise UserError("bad thing; fix it")

    for rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        assert run_cli(fails, debug=False) == 2
        assert (capsys.readouterr().err == "error: bad thing; fix it\n") is printed


def test_best_model_is_written_after_the_epoch_checkpoint(data_root, tmp_path, monkeypatch):
    args = ("train.epochs=1",)  # the last epoch: its checkpoint is the final one, resume goes straight to results
    reference = tmp_path / "reference"
    run_in_process(tiny_args(data_root, reference, *args), check=True)

    run = tmp_path / "run"

    def interrupted():
        raise KeyboardInterrupt  # a kill while best_model.pt is written, after the epoch's checkpoint

    monkeypatch.setattr(fasttrain.atomic, "os", FailingWrites("best_model", fail=interrupted))
    assert run_in_process(tiny_args(data_root, run, *args)).returncode == 130
    monkeypatch.undo()
    names = RunDir(run)
    assert [p.name for p in ckpt_io.list_checkpoints(names.checkpoints)] == ["ckpt_e0001_s00000008.pt"]
    assert not names.best_model.exists()

    run_in_process(tiny_args(data_root, run, *args) + ["--resume", "auto"], check=True)
    got, want = (json.loads(RunDir(d).results.read_text()) for d in (run, reference))
    assert (got["best_val_epoch"], got["best_test_top1"], got["test_top1"]) == (
        want["best_val_epoch"], want["best_test_top1"], want["test_top1"])
    assert ckpt_io.load_trusted(names.best_model)["epoch"] == want["best_val_epoch"]


@pytest.mark.gpu
def test_cuda_steps_log_mfu_and_sync_only_on_log_steps(trainer_of):
    from fasttrain.engine.metrics import device_peak_tflops

    trainer = trainer_of("train.device=cuda", "log.every_steps=4", "train.deterministic=false")
    batches = iter(first_batches(trainer, 4))
    trainer.train_module.train()
    trainer.metrics.start_epoch(fresh=True)
    torch.cuda.set_sync_debug_mode("error")  # any host sync on a non-log step raises
    try:
        for _ in range(3):
            trainer.step_and_log(batches, epoch=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.step_and_log(batches, epoch=0)
    record = [json.loads(line) for line in trainer.run_dir.metrics.read_text().splitlines()][-1]
    assert 0.0 <= record["data_wait_pct"] <= 100.0
    peak, _ = device_peak_tflops(trainer.device)
    assert ("mfu_pct" in record) is (peak is not None)
    if peak is not None:
        assert 0.0 < record["mfu_pct"] < 100.0
