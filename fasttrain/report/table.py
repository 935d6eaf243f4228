"""Markdown tables of runs: the cells (numbers, durations, statuses) and the study's top-1 beside each run."""

from __future__ import annotations

from typing import Any, Optional

from fasttrain.report.runs import FINISHED, RunRecord
from fasttrain.report.study_reference import differences_from_study, resolved_knobs, study_result

NOT_COMPARABLE_MARK = "†"


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def fraction(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.4f}"


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def params(count: Optional[int]) -> str:
    return "–" if count is None else f"{count / 1e6:.2f} M"


def rate(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _knob_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_knob_text(v) for v in value) + "]"
    return str(value)


def model_label(record: RunRecord) -> str:
    """The model name and the knobs the run sets to something other than the model's default."""
    defaults = resolved_knobs(record.model, {}) or {}
    changed = [f"{k}={_knob_text(v)}" for k, v in sorted(record.set_knobs.items())
               if defaults.get(k) != (list(v) if isinstance(v, tuple) else v)]
    return record.model + (" " + " ".join(changed) if changed else "")


def status_text(record: RunRecord) -> str:
    if record.status == FINISHED:
        return "finished"
    return f"**{record.status}**" + (f": {record.detail}" if record.detail else "")


def study_cell(record: RunRecord) -> tuple[str, list[str]]:
    """The study's top-1 for this model, marked when the run's setup differs; and how it differs."""
    entry = study_result(record.model, record.set_knobs)
    if entry is None:
        return "–", []
    reasons = differences_from_study(record.model, record.set_knobs, (record.config or {}).get("data", {}))
    return (f"{entry.top1:.4f} {NOT_COMPARABLE_MARK}" if reasons else f"{entry.top1:.4f}"), reasons


def _best_val(results: dict[str, Any], record: RunRecord) -> str:
    best, epoch = results.get("best_val_top1"), results.get("best_val_epoch")
    if best is None and record.epochs:  # an unfinished run: the best so far from its curves
        vals = [(r["val_top1"], r["epoch"]) for r in record.epochs if r.get("val_top1") is not None]
        if vals:
            best, epoch = max(vals)
    return "–" if best is None else f"{best:.4f} (ep {epoch})"


def runs_table(records: list[RunRecord]) -> tuple[str, list[str]]:
    """The markdown table of all runs, and footnotes for cells marked as not comparable."""
    with_ema = any(r.results.get("ema_test_top1") is not None for r in records)
    header = ["run", "model", "params", "epochs", "best val top-1", "test top-1", "test top-5"]
    header += ["EMA test top-1"] if with_ema else []
    header += ["study top-1", "wall time", "images/s", "status"]
    rows, notes = [], {}
    for record in records:
        res = record.results
        study, reasons = study_cell(record)
        if reasons:
            notes.setdefault(", ".join(reasons), []).append(record.name)
        wall = res.get("wall_time_s")
        if wall is None and record.epochs:
            wall = record.epochs[-1].get("wall_time_s")
        row = [record.name, model_label(record), params(res.get("params")),
               f"{record.epochs_done}/{record.epochs_planned if record.epochs_planned is not None else '?'}",
               _best_val(res, record), fraction(res.get("test_top1")), fraction(res.get("test_top5"))]
        row += [fraction(res.get("ema_test_top1"))] if with_ema else []
        row += [study, duration(wall), rate(res.get("images_per_s")), status_text(record)]
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    footnotes = []
    if notes:
        differ = "; ".join(f"{reasons} ({', '.join(names)})" for reasons, names in notes.items())
        footnotes.append(f"{NOT_COMPARABLE_MARK} The study's number for this model on Tiny-ImageNet; the marked runs "
                         f"differ from the study's setup, so the two are not comparable: {differ}.")
    return "\n".join(lines), footnotes
