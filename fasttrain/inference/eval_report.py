"""`python -m fasttrain eval --report DIR`: per-class top-1, the most confused pairs and two pictures of one split.

Writes into DIR: summary.json, per_class.csv, confused_pairs.csv, confusion.png (at most MAX_MATRIX_CLASSES
classes) and mistakes.png (the most confident wrong predictions, with the true and predicted names).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fasttrain.errors import UserError

MAX_MATRIX_CLASSES = 200
CONFUSED_PAIRS = 20
MISTAKES_SHOWN = 16


@dataclass
class SplitPredictions:
    split: str
    images: np.ndarray  # uint8 (N, H, W, 3), memory-mapped
    labels: np.ndarray  # int64 (N,)
    probs: np.ndarray  # float32 (N, C)

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@torch.no_grad()
def predict_split(loaded, split: str, *, batch_size: int, device: torch.device) -> SplitPredictions:
    """Class probabilities of every image of a split of the training cache, in cache order."""
    from fasttrain.data.cache import CacheError, open_cache

    cache_dir = loaded.card.get("cache_dir")
    try:
        cache = open_cache(cache_dir)
    except CacheError as err:
        raise UserError(f"{err} (the report needs the labelled images {loaded.path} was trained on; pass --run-dir "
                        f"RUN to find the cache through its config.toml)") from None
    if cache.num_classes != loaded.card["num_classes"] or cache.image_size != loaded.card["image_size"]:
        raise UserError(f"the cache at {cache.path} holds {cache.num_classes} classes at {cache.image_size}px, "
                        f"{loaded.path} was trained on {loaded.card['num_classes']} at {loaded.card['image_size']}px")
    if split not in cache.splits or cache.count(split) == 0:
        raise UserError(f"the cache at {cache.path} has no '{split}' images (it has {', '.join(cache.splits)})")
    images, labels = cache.split(split)
    net = loaded.pixels_to_logits().to(device)
    probs = np.empty((len(images), cache.num_classes), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start:start + batch_size])).to(device)  # a copy: the memmap is read-only
        probs[start:start + len(batch)] = net(batch.permute(0, 3, 1, 2)).float().softmax(dim=1).cpu().numpy()
    return SplitPredictions(split, images, labels, probs)


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


def most_confident_mistakes(result: SplitPredictions, limit: int = MISTAKES_SHOWN) -> np.ndarray:
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


def write_report(loaded, result: SplitPredictions, report_dir: Path) -> dict:
    """Every file of the report (each written atomically); returns the summary."""
    from fasttrain.atomic import atomic_write_json, atomic_write_text
    from fasttrain.inference import report_figures

    card = loaded.card
    n = card["num_classes"]
    matrix = confusion_matrix(result.labels, result.predicted, n)
    top5 = np.argsort(-result.probs, axis=1, kind="stable")[:, :min(5, n)]
    summary = {"checkpoint": str(loaded.path), "weights": loaded.weights, "model": card["model"], "split": result.split,
               "count": int(len(result.labels)), "top1": float(np.trace(matrix) / len(result.labels)),
               "top5": float((top5 == result.labels[:, None]).any(axis=1).mean()), "files": {}}
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


def report_main(args) -> dict:
    """The `eval --report` command: open, predict the split, write the report; returns the summary."""
    from fasttrain.engine.distributed import pick_cli_device
    from fasttrain.inference.loaded import open_model

    report_dir = Path(args.report)
    if report_dir.exists() and not report_dir.is_dir():
        raise UserError(f"--report {report_dir} is a file; give a folder for the report")
    loaded = open_model(args.ckpt, run_dir=args.run_dir, ema=args.ema)
    result = predict_split(loaded, args.split, batch_size=args.batch_size, device=pick_cli_device(args.device))
    return write_report(loaded, result, report_dir)
