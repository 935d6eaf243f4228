"""Checkpoint files and what they hold: atomic CRC-checked save/load (weights only), the latest k, the model card,
the RNG state, where a run resumes from, the best weights and the divergence stop.

The model card is the one description of a trained model: every command that opens one (eval, eval --report,
predict, export; fasttrain.inference.loaded.open_model) reads it, and a resume checks against it (check_fits).
Training checkpoints also hold the resolved config, for resume only. The card is carried in every checkpoint and
best_model.pt; it is plain data plus one uint8 tensor, so it loads under torch.load(weights_only=True)::

    format          CARD_FORMAT
    model, knobs    registry name and the knobs it was built with (img_size included)
    num_classes     outputs of the model
    class_ids       e.g. Tiny-ImageNet wnids, ImageFolder folder names
    class_names     Tiny-ImageNet words.txt names; ImageFolder folder names
    image_size      the cache's square size; files are resized to it exactly as prepare does
    mean, std       per-channel normalisation of 0..1 RGB pixels
    cache_dir       where the training data's cache was (what `eval` evaluates on; never needed by predict)
    tta             how the run evaluated the model ([eval] tta): the default of eval and predict; a card
                    written before it was kept reads as "none"
    check_images    a few real images of the held-out split, uint8 (n, H, W, 3): the batch an export is checked on
                    when no cache is at hand
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasttrain.atomic import atomic_write
from fasttrain.errors import UserError
from fasttrain.rundir import RunDir

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
    """One clear line when a checkpoint's model card names another model or class count, or its weights do not fit."""
    # Checkpoints written before the card carried the model's name and class count in "meta".
    card = state.get(CARD_KEY) or state.get("meta", {})
    if card.get("model") != model_name or card.get("num_classes") != num_classes:
        raise CheckpointError(
            f"checkpoint {path} is for model '{card.get('model')}' with {card.get('num_classes')} classes, "
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


# ---- the model card ----
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
    from fasttrain.data.prepare import with_mean_std
    from fasttrain.engine.runtime import model_knobs_for

    data = with_mean_std(cfg.data, cache)
    return {
        "format": CARD_FORMAT,
        "model": cfg.model.name,
        "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in model_knobs_for(cfg).items()},
        "num_classes": int(cache.num_classes),
        "class_ids": list(cache.class_ids),
        "class_names": list(cache.class_names),
        "image_size": int(cache.image_size),
        "mean": [float(x) for x in data.mean],
        "std": [float(x) for x in data.std],
        "cache_dir": str(Path(cache.path).absolute()),
        "cache_params": cache.params,
        "check_images": _check_batch(cache),
        "tta": cfg.eval.tta,
    }


def tta_choices() -> tuple[str, ...]:
    """The test-time augmentations there are: the values the config's [eval] tta admits."""
    from typing import get_args, get_type_hints

    from fasttrain.config import EvalConfig

    return get_args(get_type_hints(EvalConfig)["tta"])


def card_tta(card: dict[str, Any]) -> str:
    """The test-time augmentation the run evaluated with ("none" for a card written before cards kept it)."""
    return card.get("tta", "none")


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
    if card_tta(card) not in tta_choices():
        raise CardError(f"{where}: its model card has tta {card['tta']!r}, expected one of {', '.join(tta_choices())}; "
                        f"re-export it from a fasttrain checkpoint")
    return card


# ---- random state ----
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, loadable with weights_only=True."""
    np_state = np.random.get_state()
    py_version, py_words, py_gauss = random.getstate()
    state = {
        "python": [list(py_words), py_version, py_gauss],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what capture_rng returned: the next draws repeat those after the capture."""
    py = state["python"]
    random.setstate((py[1], tuple(py[0]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- where a run resumes from ----
@dataclass(frozen=True)
class ResumePoint:
    finished: bool = False
    """The run directory already holds results.json: nothing to do."""
    path: Path | None = None
    state: dict[str, Any] | None = None


# What a resume may change: settings that cannot alter the numbers of a step already taken or still to take, nor a
# recorded result. Any other difference is refused (changed_on_resume), since the run would no longer be the run
# its config.toml and its first epochs say it is. train.epochs is handled apart (its rule depends on the schedule).
CHANGEABLE_ON_RESUME = {
    "log.every_steps": "when numbers are logged (a log step computes nothing that changes the step)",
    "log.tensorboard": "whether numbers are mirrored to TensorBoard",
    "log.progress": "the progress bar",
    "ckpt.every_epochs": "when checkpoints are written",
    "ckpt.every_steps": "when checkpoints are written",
    "ckpt.keep": "how many checkpoints are kept",
    "train.max_steps": "where the run stops (the lr schedule spans train.epochs, not max_steps)",
    "data.prepare_workers": "how many processes decode a cache (its bytes are checked against its checksums)",
    "data.download": "whether a missing Tiny-ImageNet is fetched",
    "dist.timeout_s": "how long a collective may wait before failing",
}
LENGTH_FREE_SCHEDULES = ("constant", "step")
"""Schedules whose lr at a step does not depend on the run's length: only under these may train.epochs change."""


def flat_settings(config: dict[str, Any]) -> dict[str, Any]:
    """{"section.key": value} of a config as plain data (fasttrain.config.to_dict)."""
    return {f"{section}.{key}": value for section, table in config.items() for key, value in table.items()}


def changed_on_resume(saved: dict[str, Any], wanted: dict[str, Any], *, epoch: int, checkpoint: Path) -> dict[str, list]:
    """The allowed changes {key: [old, new]} between a checkpoint's config and the config asked for now (both
    fasttrain.config.to_dict; `epoch` the checkpoint's epoch, begun or done); a change that could alter a step's
    numbers is one UserError line naming each key."""
    old, new = flat_settings(saved), flat_settings(wanted)
    changed = {key: [old.get(key), new.get(key)] for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)}
    refused = [key for key in changed if key not in CHANGEABLE_ON_RESUME and key != "train.epochs"]
    if "train.epochs" in changed:
        schedule = new.get("sched.name")
        if schedule not in LENGTH_FREE_SCHEDULES or new["train.epochs"] <= epoch:
            refused.append("train.epochs")
    if not refused:
        return changed
    listed = "; ".join(f"{key} {changed[key][0]!r} → {changed[key][1]!r}" for key in refused)
    why = ""
    if "train.epochs" in refused and new.get("sched.name") not in LENGTH_FREE_SCHEDULES:
        why = (f" (under sched.name = {new.get('sched.name')!r} the lr of every step depends on train.epochs; "
               f"only a constant or step schedule can be extended)")
    elif "train.epochs" in refused:
        why = f" (the checkpoint is already in epoch {epoch + 1})"
    raise UserError(f"--resume of {checkpoint} with a changed config: {listed}{why}; resume with the settings the run "
                    f"was trained with (its config.toml), or start a new --out")


def resume_point(run_dir: Path, resume: str | None, log=print) -> ResumePoint:
    """Decide from `--resume` and the run directory's contents; never overwrites anything itself.

    A worker restarted by torchrun (TORCHELASTIC_RESTART_COUNT > 0) resumes as with `--resume auto`.
    """
    if resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = "auto"
    names = RunDir(run_dir)
    ckpts = list_checkpoints(names.checkpoints)
    if resume is None:
        if names.results.exists():
            raise UserError(
                f"run directory {run_dir} already holds a finished run ({names.results.name}); "
                f"pass a new --out, or --resume auto to leave it as it is"
            )
        if ckpts:
            raise UserError(
                f"run directory {run_dir} holds an unfinished run (newest checkpoint {ckpts[-1].name}); "
                f"continue it with --resume auto, or pass a new --out"
            )
        return ResumePoint()
    if resume == "auto":
        if names.results.exists():
            return ResumePoint(finished=True)
        found = newest_loadable(names.checkpoints, log=log)
        if found is None:
            if ckpts:
                log(f"warning: no loadable checkpoint in {names.checkpoints}; starting from scratch")
            return ResumePoint()
        return ResumePoint(path=found[0], state=found[1])
    path = Path(resume)
    return ResumePoint(path=path, state=load_checkpoint(path))
