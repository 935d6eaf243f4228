"""Comparison plots (matplotlib, Agg, PNG) from metrics.jsonl: curves by epoch (seeds as a band around their mean)
and val top-1 by training time (time to accuracy)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from fasttrain.atomic import atomic_write  # noqa: E402
from fasttrain.report.runs import FINISHED, RunRecord  # noqa: E402
from fasttrain.report.table import group_configurations  # noqa: E402

DPI = 110
# Characters of a title line per inch of figure width at the default title size (a longer title wraps, never clips).
TITLE_CHARS_PER_INCH = 8.5


def _label(record: RunRecord) -> str:
    return record.name if record.status == FINISHED else f"{record.name} ({record.status})"


def _series(record: RunRecord, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    points = [(r[x_key], r[y_key]) for r in record.epochs if r.get(x_key) is not None and r.get(y_key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def run_colours(records: list[RunRecord]) -> dict[str, str]:
    """One colour per configuration for the whole report, so a run (and its seeds) looks the same everywhere."""
    names = list(dict.fromkeys(record.configuration or record.name for record in records))
    return {name: f"C{index % 10}" for index, name in enumerate(names)}


def _draw_by_epoch(ax, records: list[RunRecord], y_key: str, colours: dict[str, str]) -> None:
    """One line per configuration: a single run as is; several seeds as their mean per epoch, with a band from
    the lowest to the highest seed (epochs that only some seeds reached are left out)."""
    for index, (name, runs) in enumerate(group_configurations(records)):
        colour = colours.get(name, f"C{index % 10}")
        curves = [dict(zip(*_series(r, "epoch", y_key))) for r in runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        if len(curves) == 1:
            run = next(r for r in runs if _series(r, "epoch", y_key)[0])
            xs, ys = _series(run, "epoch", y_key)
            ax.plot(xs, ys, "-" if run.status == FINISHED else "--", marker="o", markersize=3, color=colour,
                    label=_label(run))
        else:
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            mean = [sum(c[e] for c in curves) / len(curves) for e in epochs]
            ax.fill_between(epochs, [min(c[e] for c in curves) for e in epochs],
                            [max(c[e] for c in curves) for e in epochs], color=colour, alpha=0.2, linewidth=0)
            ax.plot(epochs, mean, "-", marker="o", markersize=3, color=colour,
                    label=f"{name} (mean of {len(curves)} seeds; band: min–max)")
        if y_key == "val_top1":
            ema = [dict(zip(*_series(r, "epoch", "ema_val_top1"))) for r in runs]
            ema = [c for c in ema if c]
            if ema:
                epochs = sorted(set.intersection(*(set(c) for c in ema)))
                ax.plot(epochs, [sum(c[e] for c in ema) / len(ema) for e in epochs], ":", color=colour,
                        label=f"{name} EMA" + (f" (mean of {len(ema)})" if len(ema) > 1 else ""))
    ax.grid(True, alpha=0.3)


def _save(fig, path: Path) -> None:
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def fitted_title(title: str, width_inches: float) -> str:
    """The title wrapped to the figure's width (a long comparison title would otherwise run off the image)."""
    return textwrap.fill(title, width=max(20, int(width_inches * TITLE_CHARS_PER_INCH)))


def with_curves(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.epochs]


def plot_curves(records: list[RunRecord], title: str, path: Path, colours: dict[str, str]) -> Path:
    """Train loss and val top-1 against epoch, one line per configuration (seeds as a band; unfinished runs dashed)."""
    width = 12.0
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(width, 4.5))
    _draw_by_epoch(loss_ax, records, "train_loss", colours)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss")
    loss_ax.set_title("train loss")
    _draw_by_epoch(acc_ax, records, "val_top1", colours)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("val top-1")
    acc_ax.set_title("val top-1")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(fitted_title(title, width))
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_time_to_accuracy(records: list[RunRecord], title: str, path: Path, colours: dict[str, str]) -> Path:
    """Val top-1 against training seconds (compile excluded), every run of the comparison: one thin line per seed,
    in its configuration's colour."""
    timed = [r for r in records if r.clock]
    longest = max((r.clock[-1][0] for r in timed), default=0.0)
    scale, unit = (3600.0, "h") if longest > 3 * 3600 else (60.0, "min") if longest > 180 else (1.0, "s")
    width = 7.0
    fig, ax = plt.subplots(figsize=(width, 4.5))
    for index, (name, runs) in enumerate(group_configurations(timed)):
        colour = colours.get(name, f"C{index % 10}")
        for number, run in enumerate(runs):
            xs, ys = [t / scale for t, _ in run.clock], [v for _, v in run.clock]
            label = (name if len(runs) == 1 else f"{name} ({len(runs)} seeds)") if number == 0 else None
            ax.plot(xs, ys, "-" if run.status == FINISHED else "--", marker="o", markersize=2.5, linewidth=1.2,
                    alpha=0.85, color=colour, label=label)
    ax.set_xlabel(f"training time, compile excluded ({unit})")
    ax.set_ylabel("val top-1")
    ax.set_title(fitted_title(title, width))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return path
