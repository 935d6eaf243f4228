"""The Trainer: builds a run in a fixed order, then `fit` — epochs of `train_step` (targets, loss, EMA), evaluation,
checkpoints, results."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from fasttrain.atomic import atomic_write_json
from fasttrain.config import Config, TrainConfig, to_dict
from fasttrain.data.pipelines.augment import schedule_sizes
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.engine.checkpoint import build_card, capture_rng, restore_rng, seed_everything
from fasttrain.engine.distributed import DistInfo, all_gather_objects, all_reduce_sum, broadcast_object
from fasttrain.engine.evaluate import evaluate_variants, model_variants, variants_on
from fasttrain.engine.metrics import MetricsWriter, TrainMetrics, mfu_inputs, progress_bar
from fasttrain.engine.optim import batch_sizes, build_optimizer, build_scheduler
from fasttrain.engine.runtime import (autocast, build_model, choose_cpu_amp, configure_backends, measure_cpu_amp,
                                      resolve_amp, resolve_compile, training_forward)
from fasttrain.engine.time_to_accuracy import time_to_accuracy
from fasttrain.models.counting import count_parameters
from fasttrain.rundir import RunDir, read_metrics

# The final evaluation's keys in results.json that also go to TensorBoard (under final/) at the end of a run.
EVAL_PREFIXES = ("test_", "val_", "ema_", "best_test_")

# ---- targets, loss and EMA ----
def build_mixup(train: TrainConfig, num_classes: int):
    """timm's Mixup when [train] mixup or cutmix is on (label smoothing folded into its targets), else None."""
    if train.mixup <= 0 and train.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=train.mixup, cutmix_alpha=train.cutmix, prob=train.mix_prob,
                 label_smoothing=train.label_smoothing, num_classes=num_classes)


def training_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean cross-entropy in fp32: against class indices with label smoothing, or against soft targets
    (rows of class probabilities from mixup/cutmix, whose smoothing is already in them)."""
    if targets.ndim == 2:
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def build_ema(model: torch.nn.Module, train_cfg: TrainConfig):
    """timm's ModelEmaV3 of the plain module when train.ema is on, else None."""
    if not train_cfg.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=train_cfg.ema_decay)


# ---- Ctrl-C ----
class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at a step boundary, after a checkpoint of that step was written (`checkpoint`:
    its path on rank 0, else None)."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint = step, checkpoint


class InterruptRequest:
    """SIGINT, while installed, asks training to stop at the next step boundary instead of raising at once.

    One process stops at the end of the step it is in. Under torchrun the ranks agree where to stop: the request
    is summed over ranks on log steps and at epoch ends (points every rank reaches, where the host syncs anyway),
    so every rank writes the same checkpoint. A second Ctrl-C in one process stops at once, as without this;
    under torchrun the agent forwards the signal again, so later ones are ignored (it kills the workers after its
    own timeout, 30 s by default)."""

    def __init__(self, info: DistInfo):
        self.info, self.requested, self._previous = info, False, None

    @contextlib.contextmanager
    def installed(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl-C keeps its usual meaning
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum, frame) -> None:
        if self.requested and not self.info.enabled:
            raise KeyboardInterrupt
        self.requested = True

    def stop_here(self, *, sync_point: bool) -> bool:
        """Whether to stop now; under torchrun decided together, at sync points only (every rank must ask there)."""
        if not self.info.enabled:
            return self.requested
        if not sync_point:
            return False
        votes = torch.tensor(int(self.requested), device=self.info.device)
        return all_reduce_sum(votes, self.info).item() > 0


def with_data_mean_std(cfg: Config, cache, log) -> Config:
    """`cfg` whose data.mean/std are concrete: an empty one ("from the data") becomes the cache's train split's own.

    The Trainer resolves it itself, so every builder of a Trainer (the CLI, the benchmarks, the tests) trains on the
    same numbers; config.toml keeps what the user wrote; checkpoints and their model card hold the values used.
    """
    from fasttrain.data.prepare import with_mean_std

    data = with_mean_std(cfg.data, cache)
    if data == cfg.data:
        return cfg
    log(f"data: normalising with the train split's own mean {[round(x, 4) for x in data.mean]} / std "
        f"{[round(x, 4) for x in data.std]} ({cache.path}/meta.json)")
    return dataclasses.replace(cfg, data=data)


class Trainer:
    """Owns one training run: build in a fixed order, train, evaluate, checkpoint, report."""

    def __init__(self, cfg: Config, *, cfg_name: str, run_dir: Path, info: DistInfo, cache,
                 resume_state: dict | None = None, resume_path: Path | None = None,
                 log: Callable[[str], None] = print):
        self.log = log if info.is_main else (lambda msg: None)
        cfg = with_data_mean_std(cfg, cache, self.log)
        self.cfg, self.cfg_name, self.info, self.cache = cfg, cfg_name, info, cache
        self.run_dir = RunDir(run_dir)
        self.device = info.device
        self.plan = batch_sizes(cfg, world_size=info.world_size, train_size=len(cache.split("train")[0]), where=cfg_name)
        determinism_note = configure_backends(cfg.train, self.device)
        if determinism_note:
            self.log(determinism_note)
        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        self.model = build_model(cfg, cache.num_classes).to(self.device)  # the plain module: checkpoints and eval use it
        self.num_params = count_parameters(self.model)
        self.train_module = training_forward(self.model, cfg, info)
        self.amp = self._choose_amp(resume_state)
        seed_everything(cfg.train.seed + 1000 * info.rank + 1)  # each rank draws its own dropout/mixup randomness
        self.backend, self.train_pipe, self.eval_pipes = self._build_data()
        self.optimizer = build_optimizer(cfg.optim, self.model, self.plan.lr)
        self.scheduler = build_scheduler(cfg.sched, self.optimizer, steps_per_epoch=self.plan.steps_per_epoch,
                                         total_steps=self.plan.steps_per_epoch * cfg.train.epochs, base_lr=self.plan.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.mixup = build_mixup(cfg.train, cache.num_classes)
        self.ema = build_ema(self.model, cfg.train)
        self.metrics = TrainMetrics(info, **mfu_inputs(cfg, self.device, cache.num_classes, self.log))
        self.card = build_card(cfg, cache)  # in every checkpoint file: predict/export need no run dir or cache
        self.epoch, self.step = 0, 0
        self.best_val, self.best_epoch, self.best_state = -1.0, -1, None
        self.results: dict[str, Any] | None = None
        self.interrupt, self.saved_step = InterruptRequest(info), -1
        if resume_state is not None:
            self._restore(resume_state, resume_path)
        # A fresh start also clears lines of an earlier attempt that died before its first checkpoint.
        self.metrics_log = MetricsWriter(self.run_dir.path, tensorboard=cfg.log.tensorboard,
                                         resume_step=self.step) if info.is_main else None

    # ---- build ----
    def _choose_amp(self, resume_state: dict | None) -> str:
        """train.amp resolved: "auto" on a CPU is measured on this model at its batch (rank 0 measures, every rank
        takes its choice); a resumed run keeps the precision its checkpoint was trained in."""
        cfg, info = self.cfg, self.info
        amp = resolve_amp(cfg.train.amp, self.device)
        if cfg.train.amp != "auto" or self.device.type != "cpu":
            return amp
        state = resume_state or {}
        saved = state.get("amp", state.get("meta", {}).get("amp"))  # checkpoints before the card kept it in "meta"
        if saved is not None:
            self.log(f"train.amp auto: {'bf16' if saved == 'bf16' else 'fp32 (amp off)'}, as the resumed run was trained")
            return saved
        if info.is_main:
            figures = measure_cpu_amp(self.model, batch=self.plan.micro_batch, image_size=cfg.data.image_size,
                                      num_classes=self.cache.num_classes, channels_last=cfg.train.channels_last)
            amp, line = choose_cpu_amp(figures)
            self.log(line)
        return broadcast_object(amp, info)

    def _build_data(self):
        """(backend, train pipeline, {split: eval pipeline}); the backend is resolved here, once per run."""
        from fasttrain.data.pipelines import build_pipeline, resolve_backend

        cfg, info = self.cfg, self.info
        backend, reason = resolve_backend(cfg.data.backend, self.device)
        self.log(f"data: backend {backend} ({reason})")
        if cfg.data.progressive_start_size:
            self.log(f"data: progressive resizing, train sizes {schedule_sizes(cfg.data, cfg.train.epochs)} (eval at {cfg.data.image_size})")

        def pipeline(split: str, train: bool, batch_size: int):
            images, labels = self.cache.split(split)
            return build_pipeline(cfg.data, images, labels, train=train, batch_size=batch_size, rank=info.rank,
                                  world_size=info.world_size, device=self.device, seed=cfg.train.seed, backend=backend)

        eval_batch = max(self.plan.per_rank_batch, 64)
        evals = {split: pipeline(split, False, eval_batch) for split in ("val", "test") if split in self.cache.splits}
        return backend, pipeline("train", True, self.plan.micro_batch), evals

    # ---- the loop ----
    def fit(self) -> dict[str, Any]:
        """Train from the current epoch and step to the end, then evaluate and write results.json."""
        cfg = self.cfg
        self.log(f"model: {cfg.model.name} {self.num_params:,} params | {self.info.world_size} rank(s) on {self.device.type} | "
                 f"global batch {cfg.train.batch_size} (per rank {self.plan.per_rank_batch}) | "
                 f"{self.plan.steps_per_epoch} steps/epoch | amp {self.amp} | {resolve_compile(cfg.compile.mode, self.device)[1]}")
        self.metrics.start_run()
        with self.interrupt.installed():
            for epoch in range(self.epoch, cfg.train.epochs):
                if self.step >= self.plan.total_steps:
                    break
                self.epoch = epoch
                self.train_epoch(epoch)
                if self.step >= (epoch + 1) * self.plan.steps_per_epoch:  # the epoch ran to its end
                    self.epoch = epoch + 1
                    self.end_epoch(epoch)
                    if self.step < self.plan.total_steps and self.interrupt.stop_here(sync_point=True):
                        self.stop_at_interrupt()
        if self.step % self.plan.steps_per_epoch:
            self.metrics.time_tail()
            self.save_checkpoint()  # a max_steps stop mid-epoch still leaves a resumable checkpoint
        self.results = self.finish()
        return self.results

    def train_epoch(self, epoch: int) -> None:
        """The steps of `epoch` still to do (all of them, or the rest of a resumed epoch)."""
        pipe, accum = self.train_pipe, self.cfg.train.grad_accum
        saved = pipe.state_dict()
        position = saved.get("position", 0) if saved.get("epoch") == epoch else 0
        if position == 0:
            pipe.set_epoch(epoch)
        self.train_module.train()
        done = position // accum
        steps_left = min(self.plan.steps_per_epoch - done, self.plan.total_steps - self.step)
        with progress_bar(self.info.is_main and self.cfg.log.progress, total=self.plan.steps_per_epoch, initial=done,
                          desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}") as bar:
            batches = iter(pipe)
            self.metrics.start_epoch(fresh=position == 0)
            for _ in range(steps_left):
                self.step_and_log(batches, epoch, bar)

    def step_and_log(self, batches: Iterator, epoch: int, bar=None) -> None:
        """One optimizer step and its bookkeeping: sums, a log line on log steps, a mid-epoch checkpoint when due."""
        log_now = (self.step + 1) % self.cfg.log.every_steps == 0
        loss, correct, images, grad_norm = self.train_step(batches, want_norm=log_now)
        self.metrics.add_step(loss, correct, images)
        if log_now:
            self._log_window(epoch, grad_norm, bar)
        if bar is not None:
            bar.update(1)
        every = self.cfg.ckpt.every_steps
        mid_epoch = self.step < (epoch + 1) * self.plan.steps_per_epoch  # an epoch's last step ends in end_epoch
        if every and self.step % every == 0 and mid_epoch:
            ckpt_io.check_finite(self.metrics.epoch_loss_sum(), step=self.step, epoch=epoch,
                                 directory=self.run_dir.checkpoints)
            self.save_checkpoint()
        if mid_epoch and self.step < self.plan.total_steps and self.interrupt.stop_here(sync_point=log_now):
            self.stop_at_interrupt()

    def stop_at_interrupt(self) -> None:
        """Ctrl-C: a checkpoint of this step (unless one was just written), then TrainingInterrupted."""
        if self.saved_step != self.step:
            ckpt_io.check_finite(self.metrics.epoch_loss_sum(), step=self.step, epoch=self.epoch,
                                 directory=self.run_dir.checkpoints)
            self.save_checkpoint()
        newest = ckpt_io.list_checkpoints(self.run_dir.checkpoints) if self.info.is_main else []
        raise TrainingInterrupted(self.step, newest[-1] if newest else None)

    def train_step(self, batches: Iterator, *, want_norm: bool = False):
        """One optimizer step over grad_accum micro-batches from `batches`: forward, backward, clip, update, lr, EMA.

        Returns (loss, correct, images, grad_norm): loss and correct as device tensors, grad_norm a device
        tensor when asked for, clipping or fp16 (else None). No host sync; the benchmarks time this call.
        """
        accum = self.cfg.train.grad_accum
        loss_total = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        n_images = 0
        for i in range(accum):
            with self.metrics.waiting_for_data():
                images, labels = next(batches)
            targets = labels
            if self.mixup is not None:
                images, targets = self.mixup(images, labels)
            sync = i == accum - 1 or not self.info.enabled
            with contextlib.nullcontext() if sync else self.train_module.no_sync():
                with autocast(self.amp, self.device):
                    logits = self.train_module(images)
                loss = training_loss(logits, targets, self.cfg.train.label_smoothing) / accum
                self.scaler.scale(loss).backward()
            loss_total += loss.detach()
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            n_images += labels.numel()
        return loss_total, correct, n_images, self._optimizer_step(want_norm)

    def _optimizer_step(self, want_norm: bool) -> torch.Tensor | None:
        clip, grad_norm = self.cfg.train.grad_clip, None
        if clip > 0 or want_norm or self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if clip > 0:
                torch.nn.utils.clip_grads_with_norm_(params, clip, grad_norm)
            if self.scaler.is_enabled():  # the scaler skips a step exactly when a gradient is inf or NaN
                self.metrics.count_skipped(~torch.isfinite(grad_norm))
        self.scaler.step(self.optimizer)  # a plain optimizer.step() when the scaler is off
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return grad_norm

    def _log_window(self, epoch: int, grad_norm: torch.Tensor | None, bar) -> None:
        values = self.metrics.close_window()  # host sync happens here, on log steps only
        ckpt_io.check_finite(values["loss"], step=self.step, epoch=epoch, directory=self.run_dir.checkpoints)
        values = {"epoch": epoch, **values, "lr": self.optimizer.param_groups[0]["lr"]}
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        if self.scaler.is_enabled():
            values["skipped_steps"] = self.metrics.skipped()
            values["loss_scale"] = float(self.scaler.get_scale())
        if self.metrics_log is not None:
            self.metrics_log.write("step", self.step, values, tb_prefix="train")
        if bar is not None:
            bar.set_postfix(loss=f"{values['loss']:.3f}", acc=f"{values['top1']:.3f}", lr=f"{values['lr']:.2e}",
                            ips=f"{values['images_per_s']:.0f}")
        self.metrics.start_window()

    # ---- evaluation and results ----
    def _variants(self, *, with_best: bool) -> dict[str, torch.nn.Module | None]:
        best_state = self.best_state if with_best and "test" in self.eval_pipes else None
        return model_variants(self.model, self.ema, best_state)

    def end_epoch(self, epoch: int) -> None:
        """The epoch record (train sums, val of model and EMA), the epoch checkpoint, then best_model.pt."""
        cfg = self.cfg
        record = {"epoch": epoch + 1, **self.metrics.close_epoch()}
        ckpt_io.check_finite(record["train_loss"], step=self.step, epoch=epoch, directory=self.run_dir.checkpoints)
        record.update(lr=self.optimizer.param_groups[0]["lr"], wall_time_s=self.metrics.wall_time_s())
        last_epoch = epoch + 1 == cfg.train.epochs or self.step >= self.plan.total_steps
        improved = False
        if "val" in self.eval_pipes and ((epoch + 1) % cfg.train.eval_every_epochs == 0 or last_epoch):
            record.update(evaluate_variants(self._variants(with_best=False), {"val": self.eval_pipes["val"]},
                                            self.info, self.amp, with_loss=True, tta=cfg.eval.tta))
            improved = record["val_top1"] > self.best_val
            if improved:
                self.best_val, self.best_epoch = record["val_top1"], epoch + 1
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if self.metrics_log is not None:
            self.metrics_log.write("epoch", self.step, record, tb_prefix="epoch")
        val_text = f" | val top-1 {record['val_top1']:.4f}" if "val_top1" in record else ""
        self.log(f"epoch {epoch + 1}/{cfg.train.epochs}: train loss {record['train_loss']:.4f} "
                 f"top-1 {record['train_top1']:.4f}{val_text}")
        if last_epoch or (cfg.ckpt.every_epochs and (epoch + 1) % cfg.ckpt.every_epochs == 0):
            self.save_checkpoint()
        # After the checkpoint: a kill in between leaves a checkpoint whose own weights are the best (checkpoint.restore_best).
        if improved and self.info.is_main:
            ckpt_io.save_trusted({"model": self.best_state, "epoch": self.best_epoch, "card": self.card},
                                 self.run_dir.best_model)

    def finish(self) -> dict[str, Any]:
        """Final evaluation of (model, EMA, best) × (val, test) and results.json (rank 0)."""
        cfg = self.cfg
        results: dict[str, Any] = {
            "status": "finished", "config_name": self.cfg_name, "model": cfg.model.name, "params": self.num_params,
            "num_classes": self.cache.num_classes, "epochs": cfg.train.epochs, "epochs_done": self.epoch,
            "steps": self.step, "world_size": self.info.world_size, "device": self.device.type, "backend": self.backend,
            "best_val_top1": self.best_val if self.best_val >= 0 else None,
            "best_val_epoch": self.best_epoch if self.best_epoch >= 0 else None,
            "wall_time_s": None, "images_per_s": self.metrics.images_per_s(),
        }
        if self.scaler.is_enabled():
            results["skipped_steps"] = self.metrics.skipped()
        results.update(self._final_evaluation())
        results["wall_time_s"] = self.metrics.wall_time_s()  # the whole run, its final evaluation included
        if self.info.is_main:
            results.update(time_to_accuracy(read_metrics(self.run_dir.path), cfg.train.batch_size))
            # the final numbers as TensorBoard scalars too (test_top1, test_top5, ...): metrics.jsonl gets a "final" line
            self.metrics_log.write("final", self.step, {k: v for k, v in results.items() if k.startswith(EVAL_PREFIXES)},
                                   tb_prefix="final")
            self.metrics_log.close()
            atomic_write_json(self.run_dir.results, results)
        return results

    def _final_evaluation(self) -> dict[str, float]:
        """evaluate_variants over (model, EMA, best) × (val, test), one split at a time with a line before each."""
        variants, out = self._variants(with_best=True), {}
        for split, pipe in self.eval_pipes.items():
            self.log(f"final evaluation: {', '.join(variants_on(split, variants))} on {split} ({self.cache.count(split):,} images) …")
            out.update(evaluate_variants(variants, {split: pipe}, self.info, self.amp, tta=self.cfg.eval.tta))
        return out

    # ---- checkpoints ----
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs (to add state: a key here, read back in _restore). Every rank must call it."""
        per_rank = all_gather_objects({"rng": capture_rng(), "metrics": self.metrics.state_dict()}, self.info)
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch, "step": self.step, "pipeline": self.train_pipe.state_dict(),
            "rng": [r["rng"] for r in per_rank], "metrics": [r["metrics"] for r in per_rank],
            "best_val": self.best_val, "best_epoch": self.best_epoch, "world_size": self.info.world_size,
            "amp": self.amp,  # the precision the run trains in: a resume keeps it
            "card": self.card,  # the model: what check_fits and every inference command read
            "config": to_dict(self.cfg),  # for resume only
        }

    def save_checkpoint(self) -> None:
        state = self.checkpoint_state()
        self.saved_step = self.step
        if self.info.is_main:
            path = ckpt_io.save_checkpoint(state, self.run_dir.checkpoints, epoch=self.epoch, step=self.step,
                                           keep=self.cfg.ckpt.keep)
            self.log(f"checkpoint: {path}")

    def _restore(self, state: dict[str, Any], path: Path | None) -> None:
        ckpt_io.check_fits(state, model_name=self.cfg.model.name, num_classes=self.cache.num_classes,
                           model=self.model, path=path or Path("<checkpoint>"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.best_state = ckpt_io.restore_best(state, self.run_dir.best_model, steps_per_epoch=self.plan.steps_per_epoch,
                                              write=self.info.is_main)
        # checkpoints written before the card kept the world size in "meta"
        saved_world, rank = state.get("world_size", state.get("meta", {}).get("world_size", 1)), self.info.rank
        same_world = saved_world == self.info.world_size
        # mid-epoch: the epoch record and the next log line cover every step
        self.metrics.load_state_dict(state["metrics"][rank if same_world else 0], sums=same_world)
        if same_world:
            self.train_pipe.load_state_dict(state["pipeline"])
            restore_rng(state["rng"][rank])
        else:
            # Another world size shards differently: continue at the next epoch boundary.
            self.log(f"resume: world size changed {saved_world} → {self.info.world_size}; continuing from the start of epoch {self.epoch + 1}")
            self.train_pipe.load_state_dict({"epoch": self.epoch, "position": 0})
        self.log(f"resume: {path} (epoch {self.epoch}, step {self.step})")
