"""Checkpoints: atomic save, keep the latest k, find the newest complete one, load with weights_only; best weights; divergence stop."""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasttrain.atomic import atomic_write
from fasttrain.errors import UserError

CKPT_FORMAT = 1
_NAME = re.compile(r"^ckpt_e(\d+)_s(\d+)\.pt$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, corrupt, not ours, or for another model."""


class NonFiniteLoss(UserError):
    """Training diverged: the loss became NaN or infinite."""


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt_e{epoch:04d}_s{step:08d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (temporary files never match the name pattern), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(2)), int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, _, p in sorted(found)]


def save_trusted(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically; a failed write (disk full) is one clear CheckpointError."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialize first: torch.save turns a failed file write into an opaque RuntimeError
    try:
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    except OSError as err:
        raise CheckpointError(
            f"could not write {path}: {err.strerror or err}; the previous checkpoint is intact "
            f"(free disk space, then rerun with --resume auto)"
        ) from None


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike, *, epoch: int, step: int, keep: int) -> Path:
    """Write atomically (temporary file, fsync, os.replace), then prune to the latest `keep`."""
    path = Path(directory) / checkpoint_name(epoch, step)
    save_trusted(dict(state, format=CKPT_FORMAT), path)
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    # Only this process writes checkpoints here: a temporary file left now is from a writer that was killed.
    for leftover in Path(directory).glob(".ckpt_e*.pt.*.tmp"):
        leftover.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A fasttrain checkpoint, loaded with load_trusted and checked for our format."""
    path = Path(path)
    state = load_trusted(path)
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not a fasttrain checkpoint (format {CKPT_FORMAT}); pass one written by fasttrain")
    return state


def load_trusted(path: str | os.PathLike) -> Any:
    """Load tensors and plain data only (weights_only=True); a pickled object or a damaged file is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (give an existing .pt file to --resume/--ckpt, or --resume auto)")
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects, which fasttrain refuses to load "
                f"(only tensors and plain data are trusted): {first[:200]}"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({first[:160]}); use an earlier checkpoint") from None
    except Exception as err:  # a damaged archive surfaces as many error types (RuntimeError, UnicodeDecodeError, ...)
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({msg[:160]}); use an earlier checkpoint") from None
    return state


def _check_archive(path: Path) -> None:
    """Check every record of the zip archive torch.save writes against its CRC-32.

    torch.load does not: a flipped byte inside a tensor would load as a silently wrong weight.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a complete archive: {err}); "
                              f"use an earlier checkpoint") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt (record {bad} fails its CRC-32 check); "
                              f"use an earlier checkpoint")


def newest_loadable(directory: str | os.PathLike, log=print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; damaged ones are reported and skipped, never partly used."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            log(f"warning: skipping {path.name}: {err}")
    return None


def check_fits(state: dict[str, Any], *, model_name: str, num_classes: int, model: torch.nn.Module, path: Path) -> None:
    """One clear line when a checkpoint belongs to another model or class count."""
    meta = state.get("meta", {})
    if meta.get("model") != model_name or meta.get("num_classes") != num_classes:
        raise CheckpointError(
            f"checkpoint {path} is for model '{meta.get('model')}' with {meta.get('num_classes')} classes, "
            f"but the config asks for '{model_name}' with {num_classes}; use a matching --cfg or a new --out"
        )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state["model"].items()}
    if expected != got:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got.get(k)]
        raise CheckpointError(
            f"checkpoint {path} does not fit the configured {model_name} (first mismatch: {diff[0]}); "
            f"were the model knobs changed? use the config it was trained with"
        )


def check_finite(loss: float, *, step: int, epoch: int, directory: Path) -> None:
    """Stop before a diverged model can be saved over the last good checkpoint."""
    if np.isfinite(loss):
        return
    last = list_checkpoints(directory)
    raise NonFiniteLoss(
        f"loss became non-finite ({loss}) by step {step} (epoch {epoch + 1}); "
        f"last good checkpoint: {last[-1] if last else 'none'}; lower optim.lr or enable train.grad_clip, "
        f"then rerun with --resume auto"
    )


def restore_best(state: dict[str, Any], best_path: Path, *, steps_per_epoch: int, write: bool) -> dict[str, torch.Tensor] | None:
    """The best weights of a resumed run: best_model.pt when it is of the checkpoint's best epoch.

    The trainer writes best_model.pt after the epoch's checkpoint; when a kill came in between, that
    checkpoint's own weights are the best ones, and (`write`) best_model.pt is written again from them.
    """
    best_epoch = state["best_epoch"]
    if best_epoch < 0:
        return None
    if best_path.is_file():
        saved = load_trusted(best_path)
        if saved.get("epoch") == best_epoch:
            return saved["model"]
    if state["epoch"] == best_epoch and state["step"] == best_epoch * steps_per_epoch:
        if write:
            card = {"card": state["card"]} if "card" in state else {}  # best_model.pt carries the model card too
            save_trusted({"model": state["model"], "epoch": best_epoch, **card}, best_path)
        return state["model"]
    return None
