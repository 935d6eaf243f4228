"""`python -m fasttrain eval`: loss, top-1 and top-5 of a saved model on a split of the cache its model card names,
through the trainer's own engine.evaluate.evaluate; with --report, per-class top-1, the most confused pairs and two
pictures from the same pass.

Every command that evaluates or predicts runs the same network (LoadedModel.network: uint8 pixels → the training
normalisation → the model, float32), so eval, the report and predict agree by construction.
The report writes into DIR: summary.json, per_class.csv, confused_pairs.csv, confusion.png (at most
MAX_MATRIX_CLASSES classes) and mistakes.png (the most confident wrong predictions, with the true and predicted names).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fasttrain.errors import UserError

MAX_MATRIX_CLASSES = 200
CONFUSED_PAIRS = 20
MISTAKES_SHOWN = 16


@dataclass
class Evaluation:
    """The scores of one pass over a split, and (kept for the report) what each image got, in cache order."""

    split: str
    tta: str
    scores: dict[str, float]  # loss, top1, top5, count: engine.evaluate.evaluate's
    images: np.ndarray  # uint8 (N, H, W, 3), memory-mapped
    labels: np.ndarray | None = None  # int64 (N,)
    probs: np.ndarray | None = None  # float32 (N, C)
    predicted: np.ndarray | None = None  # int64 (N,): the top-1 class the scores counted


def open_model_cache(loaded, data: str | None = None):
    """The cache `loaded` is evaluated on: `data` (a cache folder) or the one its model card names; one line when
    it is not there or holds other classes or another image size."""
    from fasttrain.data.cache import open_cache

    where = data or loaded.card.get("cache_dir")
    if not where or (data is None and not Path(where).is_dir()):
        named = f"the data cache {where} named in" if where else "no data cache named in"
        raise UserError(f"{named} {loaded.path}'s model card is not there; pass --data DIR (the cache folder "
                        f"holding meta.json) if it moved, or rebuild it with python -m fasttrain.data prepare")
    cache = open_cache(where)
    card = loaded.card
    if cache.class_ids != list(card["class_ids"]) or cache.image_size != card["image_size"]:
        other = " (other class ids)" if cache.num_classes == card["num_classes"] else ""
        raise UserError(f"the cache at {cache.path} holds {cache.num_classes} classes{other} at {cache.image_size}px, "
                        f"{loaded.path} was trained on {card['num_classes']} at {card['image_size']}px; pass --data "
                        f"with the cache it was trained on")
    return cache


def cache_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 NCHW pixels, int64 labels) on `device`, batch by batch in cache order."""
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(np.array(images[start:start + batch_size]))  # a copy: the memmap is read-only
        yield (pixels.to(device).permute(0, 3, 1, 2),  # NHWC memory: a channels_last NCHW view
               torch.from_numpy(np.asarray(labels[start:start + batch_size], dtype=np.int64)).to(device))


def evaluate_saved(loaded, split: str, *, batch_size: int, device: torch.device, tta: str | None = None,
                   data: str | None = None, keep: bool = False) -> Evaluation:
    """Evaluate `loaded` on `split` of its cache with engine.evaluate.evaluate (float32; `tta` None: the card's);
    `keep` also keeps each image's class probabilities and top-1 class for the report."""
    from fasttrain.engine.distributed import DistInfo
    from fasttrain.engine.evaluate import evaluate

    cache = open_model_cache(loaded, data)
    if split not in cache.splits or cache.count(split) == 0:
        raise UserError(f"the cache at {cache.path} has no '{split}' images (it has {', '.join(cache.splits)})")
    images, labels = cache.split(split)
    tta = tta or loaded.tta
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def keep_batch(logits: torch.Tensor, batch_labels: torch.Tensor, topk: torch.Tensor) -> None:
        seen.append((logits.softmax(dim=1).cpu(), batch_labels.cpu(), topk[:, 0].cpu()))

    scores = evaluate(loaded.network(device), cache_batches(images, labels, batch_size, device),
                      DistInfo(0, 1, 0, device), "off", tta, see_batch=keep_batch if keep else None)
    result = Evaluation(split, tta, scores, images)
    if keep:
        probs, seen_labels, predicted = (torch.cat(parts).numpy() for parts in zip(*seen))
        assert np.array_equal(seen_labels, labels), "the pass did not see the split in cache order"
        result.labels, result.probs, result.predicted = seen_labels, probs, predicted
    return result


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_rows(matrix: np.ndarray, card: dict) -> list[dict]:
    counts = matrix.sum(axis=1)
    return [{"class_index": i, "class_id": card["class_ids"][i], "class_name": card["class_names"][i],
             "images": int(counts[i]), "correct": int(matrix[i, i]),
             "top1": float(matrix[i, i] / counts[i]) if counts[i] else None}
            for i in range(len(counts))]


def confused_pairs(matrix: np.ndarray, card: dict, limit: int = CONFUSED_PAIRS) -> list[dict]:
    """The off-diagonal cells with the most images, largest first (ties: lower class indices first)."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.lexsort((np.arange(off.size), -off.ravel()))
    rows = []
    counts = matrix.sum(axis=1)
    for flat in order[:limit]:
        true, pred = divmod(int(flat), matrix.shape[1])
        if off[true, pred] == 0:
            break
        rows.append({"true_index": true, "true_id": card["class_ids"][true], "true_name": card["class_names"][true],
                     "predicted_index": pred, "predicted_id": card["class_ids"][pred],
                     "predicted_name": card["class_names"][pred], "images": int(off[true, pred]),
                     "share_of_true_class": float(off[true, pred] / counts[true])})
    return rows


def most_confident_mistakes(result: Evaluation, limit: int = MISTAKES_SHOWN) -> np.ndarray:
    """Indices of wrong predictions, most confident first."""
    wrong = np.flatnonzero(result.predicted != result.labels)
    confidence = result.probs[wrong, result.predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:limit]


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_report(loaded, result: Evaluation, report_dir: Path) -> dict:
    """Every file of the report (each written atomically) from one pass; returns the summary."""
    from fasttrain.atomic import atomic_write_json, atomic_write_text
    from fasttrain.inference import report_figures

    card = loaded.card
    n = card["num_classes"]
    matrix = confusion_matrix(result.labels, result.predicted, n)
    summary = {**eval_record(loaded, result), "files": {}}
    per_class = per_class_rows(matrix, card)
    atomic_write_text(report_dir / "per_class.csv", _csv_text(per_class, list(per_class[0])))
    summary["files"]["per_class"] = "per_class.csv"
    pairs = confused_pairs(matrix, card)
    columns = ["true_index", "true_id", "true_name", "predicted_index", "predicted_id", "predicted_name", "images",
               "share_of_true_class"]
    atomic_write_text(report_dir / "confused_pairs.csv", _csv_text(pairs, columns))
    summary["files"]["confused_pairs"] = "confused_pairs.csv"
    if n <= MAX_MATRIX_CLASSES:
        report_figures.save_confusion_matrix(matrix, card["class_names"], report_dir / "confusion.png",
                                             title=f"{card['model']} on {result.split}: top-1 {summary['top1']:.3f}")
        summary["files"]["confusion"] = "confusion.png"
    mistakes = most_confident_mistakes(result)
    if len(mistakes):
        report_figures.save_mistakes(result.images[mistakes], [card["class_names"][i] for i in result.labels[mistakes]],
                                     [card["class_names"][i] for i in result.predicted[mistakes]],
                                     result.probs[mistakes, result.predicted[mistakes]], report_dir / "mistakes.png",
                                     title=f"most confident mistakes on {result.split} ({len(mistakes)} of "
                                           f"{int((result.predicted != result.labels).sum())})")
        summary["files"]["mistakes"] = "mistakes.png"
    summary["worst_classes"] = [row["class_name"] for row in sorted(
        (r for r in per_class if r["top1"] is not None), key=lambda r: (r["top1"], r["class_index"]))[:5]]
    summary["most_confused"] = [f"{p['true_name']} → {p['predicted_name']} ({p['images']})" for p in pairs[:5]]
    atomic_write_json(report_dir / "summary.json", summary)
    return summary


def eval_record(loaded, result: Evaluation) -> dict:
    """What `eval --json` prints: the model, where it came from, the split and its scores."""
    return {"model": loaded.card["model"], "checkpoint": str(loaded.path), "weights": loaded.weights,
            "split": result.split, "tta": result.tta, **result.scores}


def eval_command(args) -> dict:
    """The `eval` command (arguments from fasttrain.__main__.eval_parser): open the model, evaluate, and with
    --report write the report; returns what it prints."""
    from fasttrain.engine.distributed import pick_cli_device
    from fasttrain.inference.loaded import open_model

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    report_dir = Path(args.report) if args.report else None
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise UserError(f"--report {report_dir} is a file; give a folder for the report")
    device = pick_cli_device(args.device)
    loaded = open_model(args.ckpt, run_dir=args.run_dir, ema=args.ema)
    result = evaluate_saved(loaded, args.split, batch_size=args.batch_size, device=device, tta=args.tta,
                            data=args.data, keep=report_dir is not None)
    return write_report(loaded, result, report_dir) if report_dir is not None else eval_record(loaded, result)
