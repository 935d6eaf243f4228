"""Evaluation: loss/top-1/top-5 of one model over one split, and the sweep over (model, EMA, best) × (val, test)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fasttrain.engine.distributed import DistInfo, all_reduce_sum
from fasttrain.engine.precision import autocast, resolve_amp

# The variants a run evaluates and the prefix of their keys: the trained model, its EMA, its best-val weights.
VARIANT_PREFIXES = {"model": "", "ema": "ema_", "best": "best_"}


@torch.no_grad()
def evaluate(model: torch.nn.Module, pipeline, info: DistInfo, amp: str) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole split: sums of correct and counts reduced across ranks."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss, top1, top5, count
    amp = resolve_amp(amp, info.device)
    for images, labels in pipeline:
        with autocast(amp, info.device):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += labels.numel()
    all_reduce_sum(sums, info)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    count = max(count, 1.0)
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(count)}


def evaluate_variants(variants: dict[str, torch.nn.Module | None], pipes: dict[str, object], info: DistInfo, amp: str,
                      *, with_loss: bool = False) -> dict[str, float]:
    """One loop over variants × splits → '{prefix}{split}_top1' and '_top5' (prefixes: VARIANT_PREFIXES).

    A variant given as None is skipped; the best weights are judged on test only (their val top-1 is what
    made them best). `with_loss` adds the trained model's '{split}_loss'. Every rank runs the same sequence.
    """
    out: dict[str, float] = {}
    for split, pipe in pipes.items():
        for variant, model in variants.items():
            if model is None or (variant == "best" and split != "test"):
                continue
            scores = evaluate(model, pipe, info, amp)
            prefix = VARIANT_PREFIXES[variant]
            if with_loss and variant == "model":
                out[f"{split}_loss"] = scores["loss"]
            out[f"{prefix}{split}_top1"], out[f"{prefix}{split}_top5"] = scores["top1"], scores["top5"]
    return out
