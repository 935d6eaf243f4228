"""The configured model: [model] knobs plus what follows from the data (T2T-ViT's input size)."""

from __future__ import annotations

import torch

from fasttrain.config import Config


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


def check_model_config(cfg: Config) -> None:
    """Build the configured model on the meta device: names, knobs and knob values checked, no memory used."""
    with torch.device("meta"):
        build_model(cfg, num_classes=2)
