"""The eval report's pictures: a row-normalised confusion matrix and a grid of the most confident mistakes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

NAMED_TICKS_UP_TO = 40


def _save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from fasttrain.atomic import atomic_write

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str, width: int = 24) -> str:
    """The first of a name's synonyms (words.txt lists several, comma-separated), cut to `width` characters."""
    name = name.split(",")[0].strip() or name
    return name if len(name) <= width else name[: width - 1] + "…"


def save_confusion_matrix(matrix: np.ndarray, names: list[str], path: Path, *, title: str) -> None:
    """Each row divided by its class's image count, so the diagonal is per-class top-1."""
    plt = _pyplot()
    n = len(names)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    side = min(16.0, max(5.0, 0.28 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    shown = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= NAMED_TICKS_UP_TO:
        labels = [_short(name) for name in names]
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        if n <= 15:
            for (i, j), value in np.ndenumerate(matrix):
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                            color="black" if share[i, j] > 0.5 else "white")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    _save_png(fig, path)


def save_mistakes(images: np.ndarray, true_names: list[str], predicted_names: list[str], confidence: np.ndarray,
                  path: Path, *, title: str) -> None:
    """Up to 16 images in a grid, each titled with its true class and the wrong prediction's probability."""
    plt = _pyplot()
    count = len(images)
    cols = min(4, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= count:
            continue
        ax.imshow(images[k], interpolation="nearest")
        ax.set_title(f"true: {_short(true_names[k])}\npredicted: {_short(predicted_names[k])}\n"
                     f"p = {confidence[k]:.3f}", fontsize=9, loc="left")
    fig.suptitle(title)
    _save_png(fig, path)
