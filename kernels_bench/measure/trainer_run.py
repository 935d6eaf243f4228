"""The real fasttrain Trainer, in-process, for a fixed number of steps: config from `--set`-style overrides."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fasttrain.config import load_config
from fasttrain.engine.data_setup import open_dataset
from fasttrain.engine.distributed import DistInfo
from fasttrain.engine.trainer import Trainer


def data_overrides(root: Path, *, image_size: int, classes: int, per_class: int, test_per_class: int,
                   val_ratio: float = 0.05) -> list[str]:
    """The learnable synthetic set under `root` (written and cached on first use, reused after)."""
    return ['data.source="synthetic"', f'data.root="{root}"', f"data.image_size={image_size}",
            f"data.synth_classes={classes}", f"data.synth_per_class={per_class}",
            f"data.synth_val_per_class={test_per_class}", f"data.val_ratio={val_ratio}"]


def train_for_steps(overrides: list[str], run_dir: Path, device: str) -> Trainer:
    """Build the Trainer exactly as `python -m fasttrain` does (single process), fit, return it
    (its `model` is the plain trained module, its `eval_pipes` the eval pipelines)."""
    quiet = [f'train.device="{device}"', "log.tensorboard=false", "log.progress=false", "ckpt.every_epochs=0", "ckpt.keep=1"]
    cfg = load_config(None, quiet + list(overrides))
    info = DistInfo(0, 1, 0, torch.device(device))
    cache = open_dataset(cfg.data, info)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, cfg_name=run_dir.name, run_dir=run_dir, info=info, cache=cache,
                      log=lambda message: print(f"  [{run_dir.name}] {message}", file=sys.stderr))
    trainer.results = trainer.fit()
    return trainer
