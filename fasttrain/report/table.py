"""Markdown tables: one row per run (the study's top-1 beside the runs that repeat its setup), one row per
configuration over its seeds (mean ± 95 % interval), the differences between arms, and time to accuracy."""

from __future__ import annotations

from typing import Any, Optional

from fasttrain.report.runs import FINISHED, RunRecord
from fasttrain.report.stats import Summary, difference, summarize, verdict
from fasttrain.report.study_reference import differences_from_study, resolved_knobs, study_result


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


def study_cell(record: RunRecord) -> str | None:
    """The study's top-1 for a run that repeats the study's setup (its data, image size and model variant);
    None for any other run (other data, size or architecture: the study's number says nothing about it)."""
    entry = study_result(record.model, record.set_knobs)
    if entry is None or differences_from_study(record.model, record.set_knobs, (record.config or {}).get("data", {})):
        return None
    return f"{entry.top1:.4f}"


def _best_val(results: dict[str, Any], record: RunRecord) -> str:
    best, epoch = results.get("best_val_top1"), results.get("best_val_epoch")
    if best is None and record.epochs:  # an unfinished run: the best so far from its curves
        vals = [(r["val_top1"], r["epoch"]) for r in record.epochs if r.get("val_top1") is not None]
        if vals:
            best, epoch = max(vals)
    return "–" if best is None else f"{best:.4f} (ep {epoch})"


def runs_table(records: list[RunRecord]) -> str:
    """The markdown table of runs; the "study top-1" column only when some run repeats the study's setup."""
    with_ema = any(r.results.get("ema_test_top1") is not None for r in records)
    studies = [study_cell(r) for r in records]
    with_study = any(studies)
    header = ["run", "model", "params", "epochs", "best val top-1", "test top-1", "test top-5"]
    header += ["EMA test top-1"] if with_ema else []
    header += ["study top-1"] if with_study else []
    header += ["wall time", "images/s", "status"]
    rows = []
    for record, study in zip(records, studies):
        res = record.results
        wall = res.get("wall_time_s")
        if wall is None and record.epochs:
            wall = record.epochs[-1].get("wall_time_s")
        row = [record.name, model_label(record), params(res.get("params")),
               f"{record.epochs_done}/{record.epochs_planned if record.epochs_planned is not None else '?'}",
               _best_val(res, record), fraction(res.get("test_top1")), fraction(res.get("test_top5"))]
        row += [fraction(res.get("ema_test_top1"))] if with_ema else []
        row += [study or "–"] if with_study else []
        row += [duration(wall), rate(res.get("images_per_s")), status_text(record)]
        rows.append(row)
    return markdown_table(header, rows)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


# ---- configurations: a run's seeds together ----

# (column, results.json key, scale, unit of the difference, higher is better)
MEASURES = (("test top-1", "test_top1", 100.0, "points", True), ("test top-5", "test_top5", 100.0, "points", True),
            ("best val top-1", "best_val_top1", 100.0, "points", True), ("wall time", "wall_time_s", 1.0, "s", False))


def group_configurations(records: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """(configuration, its runs) in first-seen order: a suite run's seeds belong together."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.configuration or record.name, []).append(record)
    return list(groups.items())


def finished_values(runs: list[RunRecord], key: str) -> list[float]:
    return [r.results[key] for r in runs if r.status == FINISHED and r.results.get(key) is not None]


def summary_cell(summary: Summary | None, *, seconds: bool = False) -> str:
    """"0.9512 ± 0.0061 (sd 0.0025)": the mean, the half-width of its 95 % t interval, the sd; one seed: the value."""
    if summary is None:
        return "–"
    show = duration if seconds else fraction
    if summary.half_width is None:
        return show(summary.mean)
    if seconds:
        return f"{summary.mean:.1f} ± {summary.half_width:.1f} s (sd {summary.sd:.1f})"
    return f"{summary.mean:.4f} ± {summary.half_width:.4f} (sd {summary.sd:.4f})"


def configurations_table(groups: list[tuple[str, list[RunRecord]]]) -> str:
    """One row per configuration: finished seeds, then mean ± 95 % interval (sd) of each measure, compile seconds."""
    header = ["configuration", "seeds finished"] + [m[0] for m in MEASURES] + ["compile/warm-up"]
    rows = []
    for name, runs in groups:
        row = [name, f"{sum(r.status == FINISHED for r in runs)}/{len(runs)}"]
        for _, key, _, unit, _ in MEASURES:
            values = finished_values(runs, key)
            row.append(summary_cell(summarize(values) if values else None, seconds=unit == "s"))
        compiles = [r.compile_s for r in runs if r.status == FINISHED and r.compile_s is not None]
        row.append(summary_cell(summarize(compiles), seconds=True) if compiles else "–")
        rows.append(row)
    return markdown_table(header, rows)


def difference_lines(groups: list[tuple[str, list[RunRecord]]]) -> list[str]:
    """Each arm against the first: the difference of the means with Welch's 95 % interval, and the verdict."""
    if len(groups) < 2:
        return []
    base_name, base_runs = groups[0]
    lines = []
    for name, runs in groups[1:]:
        for column, key, scale, unit, higher in MEASURES:
            if key == "test_top5":
                continue
            a, b = finished_values(base_runs, key), finished_values(runs, key)
            if not a or not b:
                continue
            d = difference(a, b)
            interval = ""
            if d.low is not None:
                interval = (f" [{d.low * scale:+.2f}, {d.high * scale:+.2f}]"
                            + (f", Welch df {d.df:.1f}, p = {d.p_value:.3g}" if d.df is not None else ""))
            lines.append(f"- {column}, {name} − {base_name}: {d.diff * scale:+.2f} {unit}{interval}: "
                         f"**{verdict(base_name, name, d, scale=scale, unit=unit, higher_is_better=higher)}**")
    return lines


def time_to_accuracy_table(groups: list[tuple[str, list[RunRecord]]]) -> str | None:
    """Mean training seconds (compile excluded) to each val top-1 level, over the seeds that reached it."""
    levels = sorted({level for _, runs in groups for r in runs for level in r.seconds_to_val}, key=float)
    if not levels:
        return None
    header = ["configuration"] + [f"val top-1 ≥ {level}" for level in levels]
    rows = []
    for name, runs in groups:
        row = [name]
        timed = [r for r in runs if r.seconds_to_val]
        for level in levels:
            reached = [r.seconds_to_val[level] for r in timed if r.seconds_to_val.get(level) is not None]
            if not reached:
                row.append("not reached")
                continue
            text = summary_cell(summarize(reached), seconds=True)
            row.append(text + (f" ({len(reached)}/{len(timed)} seeds)" if len(reached) < len(timed) else ""))
        rows.append(row)
    return markdown_table(header, rows)
