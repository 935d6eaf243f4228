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


# ---- what EMA and mixup/cutmix do to a step (a no-op update or an unmixed batch must fail here) ----
def float_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def test_ema_weights_move_toward_the_model_at_the_configured_decay(trainer_of):
    trainer = trainer_of("train.ema=true", "train.ema_decay=0.9", "optim.lr=0.5")
    batches = iter(first_batches(trainer, 2))
    trainer.train_module.train()
    start = float_state(trainer.ema.module)
    trainer.train_step(batches)
    after_one = float_state(trainer.model)
    # timm's ModelEmaV3 (no warm-up) takes decay 0 at its first update (get_decay(1) == 0): the EMA is the model
    assert all(torch.equal(trainer.ema.module.state_dict()[k], after_one[k]) for k in after_one)
    assert any(not torch.equal(start[k], after_one[k]) for k in start)
    trainer.train_step(batches)
    after_two = float_state(trainer.model)
    ema = float_state(trainer.ema.module)
    moved = [k for k in after_two if not torch.equal(after_one[k], after_two[k])]
    assert len(moved) > len(after_two) // 2  # the second step changed most weights: the check below has teeth
    for k in after_two:  # from then on the configured decay: ema = d * ema + (1 - d) * w
        torch.testing.assert_close(ema[k], 0.9 * after_one[k] + 0.1 * after_two[k], rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(ema[k], after_two[k]) for k in moved)


def mixing_seen(trainer, monkeypatch, steps: int) -> list[dict]:
    """Per train_step: the images and labels given, what the model saw, the targets the loss saw, and whether the
    input was mixed and the targets soft."""
    import fasttrain.engine.trainer as trainer_module

    seen_inputs, seen_targets = [], []
    trainer.model.register_forward_pre_hook(lambda module, args: seen_inputs.append(args[0].detach().clone()))
    real_loss = trainer_module.training_loss

    def loss_spy(logits, targets, smoothing):
        seen_targets.append(targets.clone())
        return real_loss(logits, targets, smoothing)

    monkeypatch.setattr(trainer_module, "training_loss", loss_spy)
    out = []
    trainer.train_module.train()
    for epoch in range(steps):
        trainer.train_pipe.set_epoch(epoch)
        for images, labels in trainer.train_pipe:
            if len(out) == steps:
                return out
            given = images.clone()
            trainer.train_step(iter([(images, labels)]))
            saw, targets = seen_inputs[-1], seen_targets[-1]
            hard = F.one_hot(labels, trainer.cache.num_classes).float()
            out.append({"given": given, "labels": labels, "saw": saw, "targets": targets,
                        "mixed": not torch.equal(saw, given), "soft": targets.ndim == 2 and not torch.equal(targets, hard)})
    return out


@pytest.mark.parametrize("settings", [("train.mixup=0.8",), ("train.cutmix=1.0",)])
def test_mixup_and_cutmix_mix_the_batch_and_soften_its_targets_alike(trainer_of, monkeypatch, settings):
    steps = mixing_seen(trainer_of(*settings, "train.channels_last=false"), monkeypatch, 8)
    assert all(s["mixed"] == s["soft"] for s in steps)  # a batch is mixed exactly when its targets are soft
    # mix_prob 1: every batch, but a CutMix box drawn at the border can hold no pixel (timm then keeps lam = 1)
    assert sum(s["mixed"] for s in steps) >= 7
    for s in (s for s in steps if s["mixed"]):
        given, saw, targets, labels = s["given"], s["saw"], s["targets"], s["labels"]
        partner = given.flip(0)  # timm mixes each image with its mirror partner in the batch
        i = next(i for i in range(len(labels)) if labels[i] != labels.flip(0)[i])
        if settings == ("train.mixup=0.8",):  # x' = lam x + (1 - lam) x.flip(0), one lam for the whole batch
            d = (given[i] - partner[i]).flatten()
            lam = ((saw[i] - partner[i]).flatten() @ d / (d @ d)).item()
            torch.testing.assert_close(saw, lam * given + (1 - lam) * partner, rtol=1e-4, atol=1e-4)
        else:  # a box of the partner pasted in: every pixel is the image's own or its partner's
            own = (saw == given).all(dim=1)
            assert torch.all(own | (saw == partner).all(dim=1))
            lam = own[i].float().mean().item()
        assert 0.0 < lam < 1.0
        assert torch.allclose(targets.sum(1), torch.ones(len(targets)))
        # the targets carry the same shares: lam of the image's own class, 1 - lam of its partner's
        assert targets[i, labels[i]].item() == pytest.approx(lam, abs=1e-4)
        assert targets[i, labels.flip(0)[i]].item() == pytest.approx(1 - lam, abs=1e-4)


def test_mix_prob_mixes_that_share_of_batches(trainer_of, monkeypatch):
    from scipy.stats import binomtest

    steps = mixing_seen(trainer_of("train.mixup=0.8", "train.cutmix=1.0", "train.mix_prob=0.5"), monkeypatch, 40)
    assert all(s["mixed"] == s["soft"] for s in steps)  # a batch is mixed exactly when its targets are soft
    mixed = sum(s["mixed"] for s in steps)
    assert 0 < mixed < len(steps) and binomtest(mixed, len(steps), 0.5).pvalue > 1e-3, mixed
