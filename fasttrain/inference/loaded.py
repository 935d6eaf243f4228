"""Open what eval, predict and export are given (best_model.pt, a training checkpoint, a safetensors bundle) as one
model, described by its model card alone (fasttrain.engine.checkpoint) — the one way every command opens a model.

Every path loads tensors and plain data only: .pt files through fasttrain.engine.checkpoint.load_trusted
(weights_only=True), bundles through safetensors. A torch.export .pt2 program is refused here because
torch.export.load unpickles; it is for serving, not for reading back into fasttrain.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasttrain.errors import UserError
from fasttrain.engine.checkpoint import CARD_KEY, CKPT_FORMAT, CardError, build_card, card_json, card_tta, check_card
from fasttrain.rundir import RunDir

BUNDLE_CARD_KEY = "fasttrain.card"
BUNDLE_CHECK_IMAGES = "fasttrain.check_images"


def guess_run_dir(path: Path) -> Path:
    """The run directory a checkpoint most likely came from: RUN/best_model.pt or RUN/checkpoints/ckpt_*.pt."""
    path = Path(path).absolute()
    return path.parent.parent if path.parent.name == RunDir.checkpoints.name else path.parent


def card_from_state(state: dict[str, Any], path: Path, run_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The card of a loaded checkpoint; an old checkpoint without one gets it from `run_dir` (config.toml + cache)."""
    if run_dir is not None:
        return card_from_run_dir(Path(run_dir))
    if CARD_KEY not in state:
        if state.get("format") != CKPT_FORMAT and "epoch" not in state:  # neither a training checkpoint nor best_model.pt
            raise CardError(f"{path} is not a fasttrain checkpoint (no model card, no training state); pass "
                            f"best_model.pt, a checkpoints/ckpt_*.pt file or an exported .safetensors bundle")
        guess = guess_run_dir(path)
        raise CardError(f"checkpoint {path} has no model card (written before fasttrain stored one); pass "
                        f"--run-dir {guess} (the run directory holding its config.toml and data cache)")
    return check_card(state[CARD_KEY], str(path))


def card_from_run_dir(run_dir: Path) -> dict[str, Any]:
    """Rebuild a card from a run directory's resolved config.toml and the data cache it names."""
    from fasttrain.config import load_config
    from fasttrain.data.cache import open_cache
    from fasttrain.data.prepare import cache_dir_for

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


class PixelsToLogits(torch.nn.Module):
    """The trained model behind the training normalisation: uint8 (or 0..255 float) RGB NCHW in, logits out.

    normalized = pixel * scale + shift with the same float32 scale/shift the training pipelines use, so a
    file decoded like prepare decodes it gives the logits eval gives for the cached image.
    """

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        from fasttrain.config import DataConfig
        from fasttrain.data.pipelines.base import normalize_scale_shift

        scale, shift = normalize_scale_shift(DataConfig(mean=tuple(mean), std=tuple(std)))
        self.model = model
        self.register_buffer("scale", torch.from_numpy(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.from_numpy(shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.to(torch.float32) * self.scale + self.shift)


@dataclass
class LoadedModel:
    """A model ready for inference: its card, the plain module (eval mode, CPU) and where it came from."""

    path: Path
    card: dict[str, Any]
    module: torch.nn.Module
    weights: str  # "model" or "ema"

    def pixels_to_logits(self) -> PixelsToLogits:
        return PixelsToLogits(self.module, self.card["mean"], self.card["std"]).eval()

    def network(self, device: torch.device) -> PixelsToLogits:
        """What eval, the report and predict run: pixels_to_logits on `device`, channels_last as training ran it
        (uint8 NHWC batches permuted to NCHW are channels_last already), eval mode, float32."""
        return self.pixels_to_logits().to(device).to(memory_format=torch.channels_last)

    @property
    def tta(self) -> str:
        """The run's [eval] tta, from the card: what eval and predict use unless told otherwise."""
        return card_tta(self.card)

    def check_images(self) -> np.ndarray:
        """The card's own real images (uint8 NHWC), possibly empty."""
        images = self.card.get("check_images")
        return images.numpy() if torch.is_tensor(images) else np.zeros((0, 1, 1, 3), np.uint8)


def _open_checkpoint(path: Path, run_dir, ema: bool) -> LoadedModel:
    from fasttrain.engine.checkpoint import CheckpointError, load_trusted

    state = load_trusted(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a fasttrain checkpoint (no model weights in it); pass best_model.pt, "
                              f"a checkpoints/ckpt_*.pt file or an exported .safetensors bundle")
    card = card_from_state(state, path, run_dir)
    weights = state["model"]
    if ema:
        if state.get("ema") is None:
            why = "the run had train.ema = false" if "optimizer" in state else "a best_model.pt file keeps the plain model only"
            raise UserError(f"{path} holds no EMA weights ({why}); "
                            f"drop --ema or pass a training checkpoint of a run with train.ema = true")
        weights = state["ema"]
    module = load_weights(model_from_card(card), weights, str(path))
    return LoadedModel(path, card, module.eval(), "ema" if ema else "model")


def _open_bundle(path: Path, ema: bool) -> LoadedModel:
    from safetensors import SafetensorError, safe_open

    if ema:
        raise UserError(f"{path} is an exported bundle: it holds one set of weights (chosen with --ema at export); "
                        f"drop --ema")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0][:160]}); "
                        f"export it again") from None
    if BUNDLE_CARD_KEY not in metadata:
        raise CardError(f"{path} is a safetensors file without a fasttrain model card; pass a bundle written by "
                        f"python -m fasttrain export --format safetensors")
    try:
        card = json.loads(metadata[BUNDLE_CARD_KEY])
    except json.JSONDecodeError as err:
        raise CardError(f"{path}: its model card is not valid JSON ({err}); export it again") from None
    card = check_card(card, str(path))
    if BUNDLE_CHECK_IMAGES in tensors:
        card["check_images"] = tensors.pop(BUNDLE_CHECK_IMAGES)
    module = load_weights(model_from_card(card), tensors, str(path))
    return LoadedModel(path, card, module.eval(), card.get("weights", "model"))


def _is_export_archive(path: Path) -> bool:
    """A torch.export.save archive (whatever its name): a zip with an archive_format record, not torch.save's data.pkl."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("/archive_format") for n in names) and not any(n.endswith("/data.pkl") for n in names)


def open_model(path: str | os.PathLike, *, run_dir: str | os.PathLike | None = None, ema: bool = False) -> LoadedModel:
    """Open a checkpoint (.pt) or safetensors bundle by its model card; every problem is one UserError line naming
    the file. `run_dir`: a checkpoint written before checkpoints carried a card gets it from its run directory;
    `ema`: a training checkpoint's EMA weights."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass best_model.pt, a checkpoints/ckpt_*.pt file or an "
                        f"exported .safetensors bundle to --ckpt)")
    if path.suffix == ".pt2" or _is_export_archive(path):
        raise UserError(f"{path} is a torch.export program: loading one unpickles code, which fasttrain refuses; "
                        f"pass the checkpoint or the .safetensors bundle it was exported from")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise UserError(f"--run-dir {run_dir} is not a directory; pass the run directory (runs/NAME) the checkpoint "
                        f"was written in")
    if path.suffix == ".safetensors":
        return _open_bundle(path, ema)
    with open(path, "rb") as f:
        if f.read(2) != b"PK":  # torch.save writes a zip archive; a truncated one still starts like one
            raise UserError(f"{path} is not a fasttrain checkpoint (not a torch.save archive); pass best_model.pt, "
                            f"a checkpoints/ckpt_*.pt file or an exported .safetensors bundle")
    return _open_checkpoint(path, run_dir, ema)
