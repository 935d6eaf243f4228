"""The model card: what predict and export need to rebuild and feed a model, carried inside every checkpoint.

A card is plain data plus one uint8 tensor, so it loads under torch.load(weights_only=True)::

    format          CARD_FORMAT
    model, knobs    registry name and the knobs it was built with (img_size included)
    num_classes     outputs of the model
    class_ids       e.g. Tiny-ImageNet wnids, ImageFolder folder names
    class_names     Tiny-ImageNet words.txt names; ImageFolder folder names
    image_size      the cache's square size; files are resized to it exactly as prepare does
    mean, std       per-channel normalisation of 0..1 RGB pixels
    cache_dir       where the training data's cache was (for `eval --report` only; never needed by predict)
    check_images    a few real images of the held-out split, uint8 (n, H, W, 3): the batch an export is checked on
                    when no cache is at hand
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasttrain.engine.run_dir import RunDir
from fasttrain.errors import UserError

CARD_FORMAT = 1
CARD_KEY = "card"
CHECK_IMAGES = 8
_REQUIRED = ("model", "knobs", "num_classes", "class_ids", "class_names", "image_size", "mean", "std")


class CardError(UserError):
    """A checkpoint or bundle whose model card is missing or does not hold what predict/export need."""


def _check_batch(cache) -> torch.Tensor:
    """Up to CHECK_IMAGES images spread over the held-out split (val, else test, else train)."""
    split = next((s for s in ("val", "test", "train") if s in cache.splits and cache.count(s) > 0), None)
    if split is None:
        return torch.zeros((0, cache.image_size, cache.image_size, 3), dtype=torch.uint8)
    images, _ = cache.split(split)
    rows = np.unique(np.linspace(0, len(images) - 1, num=min(CHECK_IMAGES, len(images))).round().astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(images[rows]))


def build_card(cfg, cache) -> dict[str, Any]:
    """The card of a model trained with `cfg` on `cache` (an opened fasttrain.data.cache.Cache)."""
    from fasttrain.engine.model_setup import model_knobs_for

    return {
        "format": CARD_FORMAT,
        "model": cfg.model.name,
        "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in model_knobs_for(cfg).items()},
        "num_classes": int(cache.num_classes),
        "class_ids": list(cache.class_ids),
        "class_names": list(cache.class_names),
        "image_size": int(cache.image_size),
        "mean": [float(x) for x in cfg.data.mean],
        "std": [float(x) for x in cfg.data.std],
        "cache_dir": str(Path(cache.path).absolute()),
        "check_images": _check_batch(cache),
    }


def card_json(card: dict[str, Any]) -> dict[str, Any]:
    """The card without its check images: what a JSON sidecar or an artifact's metadata holds."""
    return {k: v for k, v in card.items() if k != "check_images"}


def check_card(card: Any, where: str) -> dict[str, Any]:
    """`card` if it holds every field predict/export need in the right shape, else one CardError line."""
    if not isinstance(card, dict):
        raise CardError(f"{where} has no model card; re-export it from a fasttrain checkpoint")
    if card.get("format") != CARD_FORMAT:
        raise CardError(f"{where} has a model card of format {card.get('format')!r}, this fasttrain reads "
                        f"{CARD_FORMAT}; re-export it with this fasttrain")
    missing = [key for key in _REQUIRED if key not in card]
    if missing:
        raise CardError(f"{where}: its model card lacks {', '.join(missing)}; re-export it from a fasttrain checkpoint")
    n = card["num_classes"]
    if not isinstance(n, int) or n < 1 or len(card["class_ids"]) != n or len(card["class_names"]) != n:
        raise CardError(f"{where}: its model card lists {len(card['class_ids'])} class ids and "
                        f"{len(card['class_names'])} names for {n} classes; re-export it from a fasttrain checkpoint")
    if len(card["mean"]) != 3 or len(card["std"]) != 3 or min(card["std"]) <= 0:
        raise CardError(f"{where}: its model card has mean {card['mean']} / std {card['std']}; "
                        f"expected three values each, std positive")
    return card


def guess_run_dir(path: Path) -> Path:
    """The run directory a checkpoint most likely came from: RUN/best_model.pt or RUN/checkpoints/ckpt_*.pt."""
    path = Path(path).absolute()
    return path.parent.parent if path.parent.name == RunDir.checkpoints.name else path.parent


def card_from_state(state: dict[str, Any], path: Path, run_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The card of a loaded checkpoint; an old checkpoint without one gets it from `run_dir` (config.toml + cache)."""
    if run_dir is not None:
        return card_from_run_dir(Path(run_dir))
    if CARD_KEY not in state:
        guess = guess_run_dir(path)
        raise CardError(f"checkpoint {path} has no model card (written before fasttrain stored one); pass "
                        f"--run-dir {guess} (the run directory holding its config.toml and data cache)")
    return check_card(state[CARD_KEY], str(path))


def card_from_run_dir(run_dir: Path) -> dict[str, Any]:
    """Rebuild a card from a run directory's resolved config.toml and the data cache it names."""
    from fasttrain.config import load_config
    from fasttrain.data.cache import open_cache
    from fasttrain.engine.data_setup import cache_dir_for

    config = RunDir(run_dir).config
    if not config.is_file():
        raise CardError(f"--run-dir {run_dir} holds no config.toml; point it at the run directory the "
                        f"checkpoint was written in (runs/NAME)")
    cfg = load_config(config)
    cache = open_cache(cache_dir_for(cfg.data))
    return build_card(cfg, cache)


def model_from_card(card: dict[str, Any]) -> torch.nn.Module:
    """The untrained model the card describes (plain module, CPU, eval mode)."""
    from fasttrain.models import create_model

    return create_model(card["model"], num_classes=card["num_classes"], **card["knobs"]).eval()


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> torch.nn.Module:
    """Load a plain state dict; keys or shapes that do not fit the card's model are one CardError line."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise CardError(f"{where}: its weights do not fit the {type(model).__name__} its model card describes "
                        f"(first mismatch: {diff[0]}); was the file edited?")
    model.load_state_dict(weights)
    return model


def card_to_text(card: dict[str, Any]) -> str:
    return json.dumps(card_json(card), indent=1, sort_keys=False)
