"""Write REPORT.md and its PNG plots for a study suite directory or for a list of run directories."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from fasttrain.atomic import atomic_write_text
from fasttrain.errors import UserError
from fasttrain.report.plots import plot_curves, plot_time_to_accuracy, run_colours, with_curves
from fasttrain.report.runs import FAILED, FINISHED, RunRecord, load_run
from fasttrain.report.table import (cell, configurations_table, difference_lines, group_configurations, runs_table,
                                    time_to_accuracy_table)
from fasttrain.suite_manifest import read_manifest, shell_line

REPORT_NAME = "REPORT.md"


@dataclass(frozen=True)
class Section:
    name: str
    """Also the stem of its PNG files."""
    title: str
    note: str
    records: list[RunRecord]
    table: bool = True
    """Its configurations, differences and time-to-accuracy tables; off where the report's runs table says it all."""


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "comparison"


STATISTICS_NOTE = ("Per configuration: mean ± the half-width of the 95 % Student-t interval of the mean over its "
                   "finished seeds (scipy.stats.t), sd in brackets; one seed: the value alone, no interval. Differences: "
                   "each arm against the comparison's first, mean difference with Welch's 95 % interval (t-test for "
                   "unequal variances, scipy.stats.ttest_ind(equal_var=False)) in brackets; the verdict calls a "
                   "difference only when its interval excludes zero.")
TIMING_NOTE = ("Time to accuracy: training seconds on the trainer's clock to the end of the first epoch whose val "
               "top-1 reaches the level (mean ± interval over the seeds that reached it), compile/warm-up excluded "
               "and shown apart (the first log window's excess over the median window). The clock includes the val "
               "evaluations and checkpoints of earlier epochs, not process start-up, the cache or the final test "
               "evaluation.")


def _section_lines(section: Section, out_dir: Path, colours: dict[str, str]) -> list[str]:
    lines = [f"## {section.title}", ""]
    if section.note:
        lines += [section.note, ""]
    groups = group_configurations(section.records)
    if section.table:
        lines += [configurations_table(groups), ""]
        if any(len(runs) == 1 for _, runs in groups):
            lines += ["One seed: the value alone, no interval (list `seeds = [0, 1, 2]` in the suite for intervals).", ""]
        differences = difference_lines(groups)
        if differences:
            lines += differences + [""]
        timing = time_to_accuracy_table(groups)
        if timing:
            lines += ["Time to accuracy (training seconds, compile excluded):", "", timing, ""]
    plotted = with_curves(section.records)
    missing = [r for r in section.records if not r.epochs]
    if plotted:
        stem = _file_stem(section.name)
        curves = plot_curves(plotted, section.title, out_dir / f"{stem}_curves.png", colours)
        lines += [f"![{section.title}: train loss and val top-1 by epoch]({curves.name})", ""]
        if any(r.clock for r in plotted):
            wall = plot_time_to_accuracy(plotted, f"{section.title}: val top-1 by training time",
                                         out_dir / f"{stem}_wall_time.png", colours)
            lines += [f"![{section.title}: val top-1 by training time]({wall.name})", ""]
    if missing:
        lines += ["No curves yet for: " + ", ".join(f"{r.name} ({r.status})" for r in missing) + ".", ""]
    return lines


def write_report(*, title: str, intro: list[str], records: list[RunRecord], sections: list[Section],
                 out_dir: Path, commands: dict[str, str] | None = None) -> Path:
    """REPORT.md in `out_dir`: the table of every run, failures, one section per comparison, the commands."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"# {title}", ""] + intro + [f"Generated {stamp} by `python -m fasttrain.report`.", ""]
    finished = sum(r.status == FINISHED for r in records)
    lines += ["## Runs", "", f"{finished} of {len(records)} runs finished. Top-1 values are fractions; "
              "test top-1/top-5 are the final model's, best val top-1 names its epoch.", ""]
    lines += [runs_table(records), ""]
    failed = [r for r in records if r.status == FAILED]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- **{cell(r.name)}**: {cell(r.detail)}" for r in failed] + [""]
    if any(section.table for section in sections):
        lines += [STATISTICS_NOTE, "", TIMING_NOTE, ""]
    colours = run_colours(records)
    for section in sections:
        lines += _section_lines(section, out_dir, colours)
    if commands:
        lines += ["## Commands", "", "Each run, as the study runs it (rerunning resumes or skips it):", "", "```sh"]
        lines += [commands[r.name] for r in records if r.name in commands] + ["```", ""]
    path = out_dir / REPORT_NAME
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def render_suite(suite_dir: Path, out_dir: Path) -> Path:
    """The report of a study directory written by `python -m fasttrain.study` (its suite.json names the runs)."""
    suite_dir = Path(suite_dir)
    manifest = read_manifest(suite_dir)
    attempts = manifest.get("attempts", {})
    records = [
        load_run(suite_dir / run["dir"], name=run.get("key", run["name"]), attempt=attempts.get(run.get("key", run["name"])),
                 planned_config=run.get("resolved"), note=run.get("note", ""), configuration=run["name"],
                 seed=run.get("seed"))
        for run in manifest["runs"]
    ]
    sections = [Section(c["name"], c["title"], c.get("note", ""),
                        [r for name in c["runs"] for r in records if r.configuration == name])
                for c in manifest.get("comparisons", [])]
    intro = [f"Suite `{manifest.get('source', '?')}`" + (f": {manifest['description']}" if manifest.get("description") else "."), ""]
    if manifest.get("quick"):
        intro += ["**Quick mode**: tiny models, a few epochs, the synthetic data set. These numbers check that the "
                  "whole chain works; they say nothing about the study's questions.", ""]
    commands = {run.get("key", run["name"]): shell_line(run["command"]) for run in manifest["runs"] if run.get("command")}
    title = f"Study: {manifest.get('title') or manifest.get('suite')}" + (" (quick)" if manifest.get("quick") else "")
    return write_report(title=title, intro=intro, records=records, sections=sections, out_dir=Path(out_dir),
                        commands=commands)


def render_runs(run_dirs: list[Path], out_dir: Path) -> Path:
    """The report of run directories given one by one: the table and one comparison of them all."""
    records = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"run directory not found: {run_dir} (pass directories written by python -m fasttrain)")
        if re.fullmatch(r"seed\d+", run_dir.name):  # a seed of a suite run: NAME/seedN, grouped under NAME
            records.append(load_run(run_dir, name=f"{run_dir.parent.name}/{run_dir.name}",
                                    configuration=run_dir.parent.name))
        else:
            records.append(load_run(run_dir))
    names = [r.name for r in records]
    for record in records:  # two runs/…/NAME directories with the same last part: tell them apart
        if names.count(record.name) > 1:
            record.name = record.configuration = str(record.run_dir)
    # The runs table above already lists every run: this section adds the plots, and the statistics over seeds
    # when some directories are seeds of one run (NAME/seedN).
    repeated = len({r.configuration for r in records}) < len(records)
    sections = [Section("runs", "Curves", "", records, table=repeated)]
    return write_report(title="Runs", intro=[], records=records, sections=sections, out_dir=Path(out_dir))
