"""The Trainer: fixed build order (model → channels_last → compile → DDP), the step loop, eval and resume."""

from __future__ import annotations

import contextlib
import copy
import random
import resource
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fasttrain.atomic import atomic_write_json
from fasttrain.config import Config, Derived, derive, to_dict
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.engine.distributed import DistInfo, all_gather_objects, all_reduce_sum
from fasttrain.engine.metrics import MetricsWriter
from fasttrain.engine.optim import build_optimizer, build_scheduler
from fasttrain.engine.precision import autocast, resolve_amp
from fasttrain.errors import UserError
from fasttrain.models.counting import count_parameters


class NonFiniteLoss(UserError):
    """Training diverged: the loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """RNG states as tensors and plain data (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[1], tuple(py[0]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(model: torch.nn.Module, pipeline, info: DistInfo, amp: str) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole split: sums of correct and counts reduced across ranks."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss, top1, top5, count
    amp = resolve_amp(amp, info.device)
    for images, labels in pipeline:
        with autocast(amp, info.device):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += labels.numel()
    all_reduce_sum(sums, info)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    count = max(count, 1.0)
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(count)}


class Trainer:
    """Owns one training run: build in a fixed order, train, evaluate, checkpoint, report."""

    def __init__(self, cfg: Config, *, cfg_name: str, run_dir: Path, info: DistInfo, cache,
                 resume_state: dict | None = None, resume_path: Path | None = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.cfg_name, self.run_dir, self.info, self.cache = cfg, cfg_name, run_dir, info, cache
        self.log = log if info.is_main else (lambda msg: None)
        self.device = info.device
        self.amp = resolve_amp(cfg.train.amp, info.device)
        self.ckpt_dir = run_dir / "checkpoints"
        train_images, _ = cache.split("train")
        self.derived: Derived = derive(cfg, world_size=info.world_size, train_size=len(train_images), where=cfg_name)
        self._configure_backends()
        self._build_model()
        self._build_data()
        self._build_optimisation()
        self.epoch, self.step, self.elapsed_before = 0, 0, 0.0
        self.best_val, self.best_epoch, self.best_state = -1.0, -1, None
        self.sums = {"epoch": self._new_sums(), "window": self._new_sums()}
        if resume_state is not None:
            self._restore(resume_state, resume_path)
        # A fresh start also clears lines of an earlier attempt that died before its first checkpoint.
        self.metrics = MetricsWriter(run_dir, tensorboard=cfg.log.tensorboard,
                                     resume_step=self.step) if info.is_main else None

    # ---- build (fixed order) ----
    def _configure_backends(self) -> None:
        t = self.cfg.train
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = t.tf32
            torch.backends.cudnn.allow_tf32 = t.tf32
            torch.backends.cudnn.benchmark = not t.deterministic
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
        seed_everything(t.seed)  # identical initial weights on every rank

    def _build_model(self) -> None:
        from fasttrain.engine.model_setup import build_model

        cfg = self.cfg
        model = build_model(cfg, self.cache.num_classes)
        model.to(self.device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: checkpoints and evaluation use it
        self.num_params = count_parameters(model)
        forward = model
        if cfg.compile.mode != "off":
            forward = torch.compile(model, mode=None if cfg.compile.mode == "default" else cfg.compile.mode)
        if self.info.enabled:
            forward = torch.nn.parallel.DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.forward = forward
        # Each rank draws its own dropout/mixup randomness from here on.
        seed_everything(cfg.train.seed + 1000 * self.info.rank + 1)

    def _build_data(self) -> None:
        from fasttrain.data.pipelines import build_pipeline, resolve_backend

        cfg, info = self.cfg, self.info
        self.backend, reason = resolve_backend(cfg.data.backend, self.device)
        self.log(f"data: backend {self.backend} ({reason})")
        images, labels = self.cache.split("train")
        self.train_pipe = build_pipeline(
            _with_backend(cfg.data, self.backend), images, labels, train=True, batch_size=self.derived.micro_batch,
            rank=info.rank, world_size=info.world_size, device=self.device, seed=cfg.train.seed,
        )
        self.eval_pipes = {}
        eval_batch = max(self.derived.per_rank_batch, 64)
        for split in ("val", "test"):
            if split in self.cache.splits:
                images, labels = self.cache.split(split)
                self.eval_pipes[split] = build_pipeline(
                    _with_backend(cfg.data, self.backend), images, labels, train=False, batch_size=eval_batch,
                    rank=info.rank, world_size=info.world_size, device=self.device, seed=cfg.train.seed,
                )
        self.steps_per_epoch = len(self.train_pipe) // cfg.train.grad_accum
        if self.steps_per_epoch < 1:
            raise UserError(f"{self.cfg_name}: [train] batch_size {cfg.train.batch_size} leaves no full step per epoch; lower it")

    def _build_optimisation(self) -> None:
        cfg = self.cfg
        self.optimizer = build_optimizer(cfg.optim, self.model, self.derived.lr)
        self.scheduler = build_scheduler(cfg.sched, self.optimizer, steps_per_epoch=self.steps_per_epoch,
                                         total_steps=self.steps_per_epoch * cfg.train.epochs, base_lr=self.derived.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.mixup = None
        t = cfg.train
        if t.mixup > 0 or t.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, prob=t.mix_prob,
                               label_smoothing=t.label_smoothing, num_classes=self.cache.num_classes)
        self.ema = None
        if t.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=t.ema_decay)

    # ---- checkpoints ----
    def _state(self) -> dict[str, Any]:
        rng = all_gather_objects(capture_rng(), self.info)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "pipeline": self.train_pipe.state_dict(),
            "rng": rng,
            "sums": all_gather_objects({name: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v
                                               for k, v in sums.items()} for name, sums in self.sums.items()}, self.info),
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t_start),
            "config": to_dict(self.cfg),
            "meta": {"model": self.cfg.model.name, "num_classes": self.cache.num_classes,
                     "world_size": self.info.world_size, "config_name": self.cfg_name},
        }

    def save_checkpoint(self) -> None:
        state = self._state()  # every rank takes part (RNG states are gathered)
        if self.info.is_main:
            path = ckpt_io.save_checkpoint(state, self.ckpt_dir, epoch=self.epoch, step=self.step, keep=self.cfg.ckpt.keep)
            self.log(f"checkpoint: {path}")

    def _restore(self, state: dict[str, Any], path: Path | None) -> None:
        ckpt_io.check_fits(state, model_name=self.cfg.model.name, num_classes=self.cache.num_classes,
                           model=self.model, path=path or Path("<checkpoint>"))
        saved_world = state["meta"].get("world_size", 1)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.elapsed_before = state["elapsed_s"]
        best_path = self.run_dir / "best_model.pt"
        if self.best_epoch >= 0 and best_path.is_file():
            self.best_state = ckpt_io.load_trusted(best_path)["model"]
        if saved_world == self.info.world_size:
            self.train_pipe.load_state_dict(state["pipeline"])
            restore_rng(state["rng"][self.info.rank])
            if state.get("sums") is not None:  # mid-epoch: the epoch record and the next log line cover every step
                self.sums = {name: {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in sums.items()}
                             for name, sums in state["sums"][self.info.rank].items()}
        else:
            # Another world size shards differently: continue at the next epoch boundary.
            self.log(f"resume: world size changed {saved_world} → {self.info.world_size}; continuing from the start of epoch {self.epoch + 1}")
            self.train_pipe.load_state_dict({"epoch": self.epoch, "position": 0})
        self.log(f"resume: {path} (epoch {self.epoch}, step {self.step})")

    # ---- loop ----
    def _autocast(self):
        return autocast(self.amp, self.device)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 2:  # soft targets from mixup/cutmix (label smoothing folded in)
            return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.cfg.train.label_smoothing)

    def _train_step(self, batches) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimizer step over grad_accum micro-batches; returns (loss, correct) device tensors, images."""
        accum = self.cfg.train.grad_accum
        loss_total = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        n_images = 0
        for i in range(accum):
            t0 = time.perf_counter()
            images, labels = next(batches)
            self.data_wait += time.perf_counter() - t0
            targets = labels
            if self.mixup is not None:
                images, targets = self.mixup(images, labels)
            sync = i == accum - 1 or not self.info.enabled
            ctx = contextlib.nullcontext() if sync else self.forward.no_sync()
            with ctx:
                with self._autocast():
                    logits = self.forward(images)
                loss = self._loss(logits, targets) / accum
                self.scaler.scale(loss).backward()
            loss_total += loss.detach()
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            n_images += labels.numel()
        return loss_total, correct, n_images

    def _optimizer_step(self, want_norm: bool) -> torch.Tensor | None:
        clip = self.cfg.train.grad_clip
        grad_norm = None
        if clip > 0 or want_norm:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if self.scaler.is_enabled():
            old = self.scaler._scale.detach().clone()  # compare on device: a lowered scale means a skipped step
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped_steps += (self.scaler._scale < old).to(torch.int64)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return grad_norm

    def fit(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        total_steps = self.derived.total_steps
        self.t_start = time.perf_counter()
        self.log(f"model: {cfg.model.name} {self.num_params:,} params | {info.world_size} rank(s) on {self.device.type} | "
                 f"global batch {cfg.train.batch_size} (per rank {self.derived.per_rank_batch}) | {self.steps_per_epoch} steps/epoch | "
                 f"amp {self.amp} | compile {cfg.compile.mode}")
        self.images_timed, self.time_timed, self.windows_logged = 0, 0.0, 0
        self.skipped_steps = torch.zeros((), dtype=torch.int64, device=self.device)
        for epoch in range(self.epoch, cfg.train.epochs):
            if self.step >= total_steps:
                break
            self.epoch = epoch
            self._train_epoch(epoch, total_steps)
            if self._epoch_finished(epoch):
                self.epoch = epoch + 1
                self._end_of_epoch(epoch)
        return self._finish()

    def _mid_epoch(self) -> bool:
        return self.step % self.steps_per_epoch != 0

    def _epoch_finished(self, epoch: int) -> bool:
        return self.step >= (epoch + 1) * self.steps_per_epoch

    def _new_sums(self) -> dict[str, Any]:
        """This rank's loss, correct, image and step sums over an epoch or a log window (checkpointed)."""
        return {"loss": torch.zeros((), device=self.device),
                "correct": torch.zeros((), dtype=torch.int64, device=self.device), "images": 0, "steps": 0}

    def _train_epoch(self, epoch: int, total_steps: int) -> None:
        cfg, info = self.cfg, self.info
        pipe = self.train_pipe
        position = pipe.state_dict().get("position", 0) if pipe.state_dict().get("epoch") == epoch else 0
        if position == 0:
            pipe.set_epoch(epoch)
            self.sums = {"epoch": self._new_sums(), "window": self._new_sums()}
        self.forward.train()
        steps_left = min(self.steps_per_epoch - position // cfg.train.grad_accum, total_steps - self.step)
        bar = None
        if info.is_main and cfg.log.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=position // cfg.train.grad_accum,
                       desc=f"epoch {epoch + 1}/{cfg.train.epochs}", dynamic_ncols=True, leave=False)
        batches = iter(pipe)
        self.data_wait = 0.0
        window_start, timed_images = time.perf_counter(), 0
        for _ in range(steps_left):
            log_now = (self.step + 1) % cfg.log.every_steps == 0
            loss, correct, n = self._train_step(batches)
            grad_norm = self._optimizer_step(want_norm=log_now)
            for sums in self.sums.values():
                sums["loss"] += loss
                sums["correct"] += correct
                sums["images"] += n
                sums["steps"] += 1
            timed_images += n
            if log_now:
                self._log_window(epoch, self.sums["window"], timed_images, window_start, grad_norm, bar)
                self.sums["window"] = self._new_sums()
                self.data_wait = 0.0
                window_start, timed_images = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
            if cfg.ckpt.every_steps and self.step % cfg.ckpt.every_steps == 0 and not self._epoch_finished(epoch):
                check = self.sums["epoch"]["loss"].detach().clone()
                all_reduce_sum(check, info)
                self._check_finite(check.item(), epoch)
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        totals = self.sums["epoch"]
        sums = torch.stack([totals["loss"].float(), totals["correct"].float()]).to(torch.float64)
        all_reduce_sum(sums, info)
        self.train_epoch_stats = {
            "train_loss": sums[0].item() / max(1, totals["steps"] * info.world_size),
            "train_top1": sums[1].item() / max(1, totals["images"] * info.world_size),
        }

    def _log_window(self, epoch, window: dict[str, Any], timed_images: int, window_start, grad_norm, bar):
        """Log the window's loss and top-1 (its sums may start before a resume); time only this process's steps."""
        info = self.info
        stats = torch.stack([window["loss"].float(), window["correct"].float()]).to(torch.float64)
        all_reduce_sum(stats, info)  # host sync happens here, on log steps only
        loss = stats[0].item() / (window["steps"] * info.world_size)
        self._check_finite(loss, epoch)
        elapsed = time.perf_counter() - window_start
        images = timed_images * info.world_size
        ips = images / elapsed if elapsed > 0 else 0.0
        if self.windows_logged > 0:  # a process's first window holds compilation and warm-up: not counted
            self.images_timed += images
            self.time_timed += elapsed
        self.windows_logged += 1
        values = {
            "epoch": epoch,
            "loss": loss,
            "top1": stats[1].item() / (window["images"] * info.world_size),
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": ips,
            "data_wait_pct": 100.0 * self.data_wait / elapsed if elapsed > 0 else 0.0,
            "peak_mem_mb": peak_memory_mb(self.device),
        }
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        if self.scaler.is_enabled():
            values["skipped_steps"] = int(self.skipped_steps.item())
            values["loss_scale"] = float(self.scaler.get_scale())
        if self.metrics is not None:
            self.metrics.write("step", self.step, values, tb_prefix="train")
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{values['top1']:.3f}", lr=f"{values['lr']:.2e}", ips=f"{ips:.0f}")

    def _check_finite(self, loss: float, epoch: int) -> None:
        """Stop before a diverged model can be saved over the last good checkpoint."""
        if np.isfinite(loss):
            return
        last = ckpt_io.list_checkpoints(self.ckpt_dir)
        raise NonFiniteLoss(
            f"loss became non-finite ({loss}) by step {self.step} (epoch {epoch + 1}); "
            f"last good checkpoint: {last[-1] if last else 'none'}; lower optim.lr or enable train.grad_clip, "
            f"then rerun with --resume auto"
        )

    def _end_of_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        self._check_finite(self.train_epoch_stats["train_loss"], epoch)
        record = {"epoch": epoch + 1, **self.train_epoch_stats, "lr": self.optimizer.param_groups[0]["lr"],
                  "wall_time_s": self.elapsed_before + time.perf_counter() - self.t_start}
        last_epoch = epoch + 1 == cfg.train.epochs or self.step >= self.derived.total_steps
        if "val" in self.eval_pipes and ((epoch + 1) % cfg.train.eval_every_epochs == 0 or last_epoch):
            val = evaluate(self.model, self.eval_pipes["val"], self.info, self.amp)
            record.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
            if self.ema is not None:
                ema_val = evaluate(self.ema.module, self.eval_pipes["val"], self.info, self.amp)
                record.update(ema_val_top1=ema_val["top1"], ema_val_top5=ema_val["top5"])
            if val["top1"] > self.best_val:
                self.best_val, self.best_epoch = val["top1"], epoch + 1
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                if self.info.is_main:
                    ckpt_io.save_trusted({"model": self.best_state, "epoch": epoch + 1}, self.run_dir / "best_model.pt")
        if self.metrics is not None:
            self.metrics.write("epoch", self.step, record, tb_prefix="epoch")
        val_text = f" | val top-1 {record['val_top1']:.4f}" if "val_top1" in record else ""
        self.log(f"epoch {epoch + 1}/{cfg.train.epochs}: train loss {record['train_loss']:.4f} "
                 f"top-1 {record['train_top1']:.4f}{val_text}")
        if last_epoch or (cfg.ckpt.every_epochs and (epoch + 1) % cfg.ckpt.every_epochs == 0):
            self.save_checkpoint()

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        if self._mid_epoch():
            self.save_checkpoint()  # a max_steps stop mid-epoch still leaves a resumable checkpoint
        wall = self.elapsed_before + time.perf_counter() - self.t_start
        results: dict[str, Any] = {
            "status": "finished",
            "config_name": self.cfg_name,
            "model": cfg.model.name,
            "params": self.num_params,
            "num_classes": self.cache.num_classes,
            "epochs": cfg.train.epochs,
            "epochs_done": self.epoch,
            "steps": self.step,
            "world_size": self.info.world_size,
            "device": self.device.type,
            "backend": self.backend,
            "best_val_top1": self.best_val if self.best_val >= 0 else None,
            "best_val_epoch": self.best_epoch if self.best_epoch >= 0 else None,
            "wall_time_s": wall,
            "images_per_s": self.images_timed / self.time_timed if self.time_timed > 0 else None,
        }
        if self.scaler.is_enabled():
            results["skipped_steps"] = int(self.skipped_steps.item())
        for split in ("val", "test"):
            if split not in self.eval_pipes:
                continue
            final = evaluate(self.model, self.eval_pipes[split], self.info, self.amp)
            results[f"{split}_top1"], results[f"{split}_top5"] = final["top1"], final["top5"]
            if self.ema is not None:
                ema = evaluate(self.ema.module, self.eval_pipes[split], self.info, self.amp)
                results[f"ema_{split}_top1"], results[f"ema_{split}_top5"] = ema["top1"], ema["top5"]
        if "test" in self.eval_pipes and self.best_state is not None:
            best = copy.deepcopy(self.model)
            best.load_state_dict(self.best_state)
            bt = evaluate(best, self.eval_pipes["test"], self.info, self.amp)
            results["best_test_top1"], results["best_test_top5"] = bt["top1"], bt["top5"]
        if self.info.is_main:
            self.metrics.close()
            atomic_write_json(self.run_dir / "results.json", results)
        return results


def _with_backend(data_cfg, backend: str):
    import dataclasses

    return dataclasses.replace(data_cfg, backend=backend)
