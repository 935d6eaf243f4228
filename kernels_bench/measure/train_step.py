"""One training step (forward, loss, backward, optimizer) on synthetic tensors resident on the device: the model-only cost."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from fasttrain.config import OptimConfig
from fasttrain.engine.optim import build_optimizer
from fasttrain.engine.precision import AMP_DTYPES, resolve_amp
from fasttrain.models import create_model


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


class SyntheticTrainStep:
    """Calling it runs one optimizer step of `model_name` on a fixed random batch (SGD, momentum 0.9,
    as the study's ResNet runs and the trainer's defaults), built the way the Trainer builds it:
    model → channels_last → torch.compile; autocast around the forward, loss in fp32."""

    def __init__(self, model_name: str, knobs: dict, settings: StepSettings, *, num_classes: int, batch_size: int,
                 image_size: int, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        model = create_model(model_name, num_classes, **knobs).to(device)
        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        model.to(memory_format=memory_format)
        model.train()
        self.model = model
        self.forward = torch.compile(model) if settings.compile else model
        self.optimizer = build_optimizer(OptimConfig(), model, lr=0.01)
        self.images = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
        self.labels = torch.randint(0, num_classes, (batch_size,), device=device)
        self.amp_dtype = AMP_DTYPES.get(resolve_amp(settings.amp, torch.device(device)))
        self.device_type = torch.device(device).type
        self.batch_size = batch_size

    def __call__(self) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.forward(self.images)
        loss = F.cross_entropy(logits.float(), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def probe_step(case: dict) -> None:
    """One uncompiled step of a case (the crash guard's worker): the same kernels a compiled step calls for
    its convolutions, without minutes of compilation."""
    settings = StepSettings(channels_last=case["channels_last"], amp=case["amp"])
    step = SyntheticTrainStep(case["model"], case["knobs"], settings, num_classes=case["num_classes"],
                              batch_size=case["batch_size"], image_size=case["image_size"], device=torch.device("cpu"))
    step()
