"""The configured model: [model] knobs plus what follows from the data, and the forward the step trains (compile, DDP)."""

from __future__ import annotations

import torch

from fasttrain.config import Config
from fasttrain.engine.compile_choice import compile_kwargs, resolve_compile
from fasttrain.errors import UserError


def model_knobs_for(cfg: Config) -> dict:
    """The knobs the user set; a model that takes `img_size` gets data.image_size unless set."""
    from fasttrain.models import model_knobs

    knobs = cfg.model.knobs()
    if "img_size" in model_knobs(cfg.model.name) and "img_size" not in knobs:
        knobs["img_size"] = cfg.data.image_size
    return knobs


def build_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    from fasttrain.models import create_model

    return create_model(cfg.model.name, num_classes=num_classes, **model_knobs_for(cfg))


def build_ema(model: torch.nn.Module, train_cfg):
    """timm's ModelEmaV3 of the plain module when train.ema is on, else None."""
    if not train_cfg.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=train_cfg.ema_decay)


def check_model_config(cfg: Config, num_classes: int = 2) -> None:
    """Build the configured model on the meta device and pass one batch of the data's image size through it.

    Names, knobs, knob values and shapes the knobs make impossible (e.g. zero channels) are caught before any
    data work or memory use (~0.1 s even for ResNet-50).
    """
    size = cfg.data.image_size
    with torch.device("meta"):
        model = build_model(cfg, num_classes)
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, 3, size, size, device="meta"))
    except UserError:
        raise
    except Exception as err:
        knobs = ", ".join(f"{k}={v!r}" for k, v in cfg.model.knobs().items()) or "default knobs"
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(
            f"model {cfg.model.name} ({knobs}) fails on {size}×{size} images: {type(err).__name__}: {first}; "
            f"change its [model] knobs"
        ) from None


def training_forward(model: torch.nn.Module, cfg: Config, info) -> torch.nn.Module:
    """The module the training step calls, in the fixed order channels_last → torch.compile → DDP.

    `model` (already on the device) stays the plain module that checkpoints and evaluation use; this is the
    one place compile is set up (cfg.compile).
    """
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = model
    mode, _ = resolve_compile(cfg.compile.mode, info.device)
    if mode != "off":
        forward = torch.compile(model, **compile_kwargs(mode))
    if info.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    return forward
