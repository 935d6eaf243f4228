"""One training step as the Trainer runs it (Trainer.train_step: forward, loss, backward, optimizer, lr) on a fixed
synthetic batch already on the device: the model-only cost, with no input pipeline in the way."""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fasttrain.engine.runtime import resolve_amp


@dataclass(frozen=True)
class StepSettings:
    """The speed knobs of a step; the study's way is all of them off."""

    channels_last: bool = False
    amp: str = "off"
    """"off", "bf16" (forced) or "auto" (train.amp's default: what resolve_amp picks for the device; fp16
    would need a GradScaler, which the step suite does not measure, so auto's fp16 on old GPUs is not offered)."""
    compile: bool = False

    @property
    def label(self) -> str:
        parts = [name for name, on in (("channels_last", self.channels_last), ("amp", self.amp != "off"),
                                       ("compile", self.compile)) if on]
        return "+".join(parts) or "study"

    def resolved(self, device: torch.device) -> "StepSettings":
        """These settings with amp "auto" replaced by what the trainer would pick on `device`."""
        return replace(self, amp=resolve_amp(self.amp, device))


def _data_root(image_size: int, num_classes: int, per_class: int) -> Path:
    """A small learnable synthetic set (one batch and a bit), written once and reused by every case."""
    return Path(tempfile.gettempdir()) / f"kernels_bench_step_{num_classes}c_{per_class}pc_{image_size}px"


class SyntheticTrainStep:
    """Calling it runs one optimizer step of the real Trainer (its `train_step`) built from a Config:
    model → channels_last → torch.compile as the Trainer builds it, SGD (momentum 0.9, the trainer's default),
    constant lr, on a fixed random batch resident on the device."""

    def __init__(self, model_name: str, knobs: dict, settings: StepSettings, *, num_classes: int, batch_size: int,
                 image_size: int, device: torch.device, seed: int = 0):
        from kernels_bench.measure.trainer_run import build_trainer, synthetic_data

        per_class = max(2, -(-batch_size * 12 // (10 * num_classes)))  # the train split must hold one batch
        data = synthetic_data(_data_root(image_size, num_classes, per_class), image_size=image_size, classes=num_classes,
                              per_class=per_class, test_per_class=1)
        sections = {"data": {**data, "backend": "torch"}, "model": {"name": model_name, **knobs},
                    "train": {"batch_size": batch_size, "epochs": 1, "seed": seed, "amp": settings.amp,
                              "channels_last": settings.channels_last},
                    "optim": {"lr": 0.01}, "sched": {"name": "constant"},
                    "compile": {"mode": "default" if settings.compile else "off"}}
        self._run_dir = tempfile.TemporaryDirectory(prefix="kernels_bench_step_")
        self.trainer = build_trainer(sections, Path(self._run_dir.name) / "run", str(device))
        self.trainer.train_module.train()
        self.model = self.trainer.model
        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device).contiguous(
            memory_format=memory_format)
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
        self.batch_size = batch_size

    def __call__(self) -> torch.Tensor:
        loss, _, _, _ = self.trainer.train_step(itertools.repeat((self.images, self.labels)))
        return loss


def probe_step(case: dict) -> None:
    """One uncompiled step of a case (the crash guard's worker): the same kernels a compiled step calls for
    its convolutions, without minutes of compilation."""
    settings = StepSettings(channels_last=case["channels_last"], amp=case["amp"])
    step = SyntheticTrainStep(case["model"], case["knobs"], settings, num_classes=case["num_classes"],
                              batch_size=case["batch_size"], image_size=case["image_size"], device=torch.device("cpu"))
    step()
