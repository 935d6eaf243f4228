"""Comparison plots (matplotlib, Agg, PNG) from metrics.jsonl epoch records: curves by epoch and by wall time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from fasttrain.atomic import atomic_write  # noqa: E402
from fasttrain.report.runs import FINISHED, RunRecord  # noqa: E402

# Runs whose seconds per epoch differ by more than this factor get a val top-1 vs wall-time plot.
SPEED_DIFFERENCE = 1.15
DPI = 110


def _label(record: RunRecord) -> str:
    return record.name if record.status == FINISHED else f"{record.name} ({record.status})"


def _series(record: RunRecord, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    points = [(r[x_key], r[y_key]) for r in record.epochs if r.get(x_key) is not None and r.get(y_key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def run_colours(records: list[RunRecord]) -> dict[str, str]:
    """One colour per run for the whole report, so a run looks the same in every comparison."""
    return {record.name: f"C{index % 10}" for index, record in enumerate(records)}


def _draw(ax, records: list[RunRecord], x_key: str, y_key: str, colours: dict[str, str], *,
          x_scale: float = 1.0) -> None:
    for index, record in enumerate(records):
        colour = colours.get(record.name, f"C{index % 10}")
        style = "-" if record.status == FINISHED else "--"
        xs, ys = _series(record, x_key, y_key)
        if xs:
            ax.plot([x / x_scale for x in xs], ys, style, marker="o", markersize=3, color=colour, label=_label(record))
        if y_key == "val_top1":
            xs, ys = _series(record, x_key, "ema_val_top1")
            if xs:
                ax.plot([x / x_scale for x in xs], ys, ":", color=colour, label=f"{record.name} EMA")
    ax.grid(True, alpha=0.3)


def _save(fig, path: Path) -> None:
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def with_curves(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.epochs]


def plot_curves(records: list[RunRecord], title: str, path: Path, colours: dict[str, str]) -> Path:
    """Train loss and val top-1 against epoch, one line per run (unfinished runs dashed)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    _draw(loss_ax, records, "epoch", "train_loss", colours)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss")
    loss_ax.set_title("train loss")
    _draw(acc_ax, records, "epoch", "val_top1", colours)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("val top-1")
    acc_ax.set_title("val top-1")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def seconds_per_epoch(record: RunRecord) -> float | None:
    xs, ys = _series(record, "epoch", "wall_time_s")
    if not xs or xs[-1] <= 0:
        return None
    return ys[-1] / xs[-1]


def speeds_differ(records: list[RunRecord]) -> bool:
    speeds = [s for s in (seconds_per_epoch(r) for r in records) if s]
    return len(speeds) >= 2 and max(speeds) > SPEED_DIFFERENCE * min(speeds)


def plot_wall_time(records: list[RunRecord], title: str, path: Path, colours: dict[str, str]) -> Path:
    """Val top-1 against training wall time, one line per run."""
    longest = max((r.epochs[-1].get("wall_time_s") or 0) for r in records)
    scale, unit = (3600.0, "h") if longest > 3 * 3600 else (60.0, "min") if longest > 180 else (1.0, "s")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw(ax, records, "wall_time_s", "val_top1", colours, x_scale=scale)
    ax.set_xlabel(f"wall time ({unit})")
    ax.set_ylabel("val top-1")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return path
