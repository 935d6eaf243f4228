"""Evaluation: loss/top-1/top-5 of one model over one split (with test-time augmentation), and the sweep over
(model, EMA, best) × (val, test)."""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F

from fasttrain.engine.distributed import DistInfo, all_reduce_sum
from fasttrain.engine.runtime import autocast, resolve_amp

# The variants a run evaluates and the prefix of their keys: the trained model, its EMA, its best-val weights.
VARIANT_PREFIXES = {"model": "", "ema": "ema_", "best": "best_"}


def tta_logits(model: torch.nn.Module, images: torch.Tensor, tta: str) -> torch.Tensor:
    """model(images), or with "flip" the mean of the logits of each image and its horizontal mirror (float32).

    "flip" runs the model twice per batch: evaluation is not compiled, so it doubles the time of an evaluation.
    """
    logits = model(images).float()
    if tta == "flip":
        # NCHW: dim 3 is the width; flip keeps channels_last memory format
        logits = (logits + model(images.flip(3)).float()) * 0.5
    elif tta != "none":
        raise ValueError(f"unknown tta {tta!r}")  # the config schema and the eval CLI admit only "none" and "flip"
    return logits


def pad_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """`images` grown to `size` rows with zeros (same memory format): the last partial batch of a split, so the
    model sees one batch shape for the whole split (eval mode keeps rows apart).

    Evaluation is not compiled (the trainer and the eval command run the plain module), so what the one shape
    saves today is the kernel choice for a second shape (cuDNN autotuning, when train.deterministic is off); were
    evaluation compiled, it would also keep the last batch from recompiling the graph. Whether compiling
    evaluation pays is a GPU measurement not made yet.
    """
    if images.shape[0] >= size:
        return images
    fmt = torch.channels_last if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    padded = images.new_zeros((size, *images.shape[1:])).contiguous(memory_format=fmt)
    padded[: images.shape[0]] = images
    return padded


@torch.no_grad()
def evaluate(model: torch.nn.Module, pipeline, info: DistInfo, amp: str, tta: str = "none",
             see_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole split: sums of correct and counts reduced across ranks. Every batch
    reaches the model at the first batch's size (see pad_batch); each sample is counted exactly once.
    `tta` ([eval] tta): "flip" scores the mean logits of each image and its mirror.

    `see_batch(logits, labels, topk)`, when given, sees each of this rank's batches: float32 logits, labels and
    the top-k class indices the scores were counted from (best first); the eval report's per-class numbers come
    from the same pass as its top-1."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss, top1, top5, count
    amp = resolve_amp(amp, info.device)
    full = None
    for images, labels in pipeline:
        count = labels.shape[0]
        full = full or count
        with autocast(amp, info.device):
            logits = tta_logits(model, pad_batch(images, full), tta)[:count]
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += labels.numel()
        if see_batch is not None:
            see_batch(logits, labels, topk)
    all_reduce_sum(sums, info)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    count = max(count, 1.0)
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(count)}


def model_variants(model: torch.nn.Module, ema, best_state: dict | None) -> dict[str, torch.nn.Module | None]:
    """The variants evaluate_variants sweeps: the trained model, its EMA (timm ModelEmaV3 or None) and, when
    `best_state` is given, a copy of the model holding the best-val weights."""
    best = None
    if best_state is not None:
        best = copy.deepcopy(model)
        best.load_state_dict(best_state)
    return {"model": model, "ema": ema.module if ema is not None else None, "best": best}


def variants_on(split: str, variants: dict[str, torch.nn.Module | None]) -> dict[str, torch.nn.Module]:
    """The variants judged on `split`: those given (not None); the best weights on test only (their val top-1 is
    what made them best)."""
    return {name: model for name, model in variants.items()
            if model is not None and (name != "best" or split == "test")}


def evaluate_variants(variants: dict[str, torch.nn.Module | None], pipes: dict[str, object], info: DistInfo, amp: str,
                      *, with_loss: bool = False, tta: str = "none") -> dict[str, float]:
    """One loop over variants × splits → '{prefix}{split}_top1' and '_top5' (prefixes: VARIANT_PREFIXES).

    Each split sees `variants_on(split, variants)`. `with_loss` adds the trained model's '{split}_loss'. Every
    rank runs the same sequence.
    """
    out: dict[str, float] = {}
    for split, pipe in pipes.items():
        for variant, model in variants_on(split, variants).items():
            scores = evaluate(model, pipe, info, amp, tta)
            prefix = VARIANT_PREFIXES[variant]
            if with_loss and variant == "model":
                out[f"{split}_loss"] = scores["loss"]
            out[f"{prefix}{split}_top1"], out[f"{prefix}{split}_top5"] = scores["top1"], scores["top5"]
    return out
