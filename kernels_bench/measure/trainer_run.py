"""The real fasttrain Trainer, in-process, for a fixed number of steps: its Config built from sections of values
through the config schema itself (fasttrain.config.from_dict + validate), no TOML text in between."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fasttrain.config import Config, from_dict, validate
from fasttrain.engine.launch import open_dataset
from fasttrain.engine.distributed import DistInfo
from fasttrain.engine.trainer import Trainer


def synthetic_data(root: Path, *, image_size: int, classes: int, per_class: int, test_per_class: int,
                   val_ratio: float = 0.05) -> dict:
    """[data] values of the learnable synthetic set under `root` (written and cached on first use, reused after)."""
    return {"source": "synthetic", "root": str(root), "image_size": image_size, "synth_classes": classes,
            "synth_per_class": per_class, "synth_val_per_class": test_per_class, "val_ratio": val_ratio}


def merge(*layers: dict[str, dict]) -> dict[str, dict]:
    """Sections of values, later layers winning key by key ({"train": {...}, "model": {...}, ...})."""
    merged: dict[str, dict] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


def bench_config(sections: dict[str, dict], device: str) -> Config:
    """A checked Config: quiet logging and a single kept checkpoint on `device`, then `sections` on top."""
    quiet = {"train": {"device": device}, "log": {"tensorboard": False, "progress": False},
             "ckpt": {"every_epochs": 0, "keep": 1}}
    cfg = from_dict(merge(quiet, sections), "kernels_bench")
    validate(cfg, "kernels_bench")
    return cfg


def build_trainer(sections: dict[str, dict], run_dir: Path, device: str) -> Trainer:
    """The Trainer exactly as `python -m fasttrain` builds it (single process), not yet fitted."""
    cfg = bench_config(sections, device)
    info = DistInfo(0, 1, 0, torch.device(device))
    cache = open_dataset(cfg.data, info)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, cfg_name=run_dir.name, run_dir=run_dir, info=info, cache=cache,
                   log=lambda message: print(f"  [{run_dir.name}] {message}", file=sys.stderr))


def train_for_steps(sections: dict[str, dict], run_dir: Path, device: str) -> Trainer:
    """Build the Trainer, fit, return it (its `model` is the plain trained module, its `eval_pipes` the eval pipelines)."""
    trainer = build_trainer(sections, run_dir, device)
    trainer.results = trainer.fit()
    return trainer
