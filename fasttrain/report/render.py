"""Write REPORT.md and its PNG plots for a study suite directory or for a list of run directories."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from fasttrain.atomic import atomic_write_text
from fasttrain.errors import UserError
from fasttrain.report.plots import plot_curves, plot_wall_time, run_colours, speeds_differ, with_curves
from fasttrain.report.runs import FAILED, FINISHED, RunRecord, load_run
from fasttrain.report.table import cell, runs_table
from fasttrain.suite_manifest import read_manifest, shell_line

REPORT_NAME = "REPORT.md"


@dataclass(frozen=True)
class Section:
    name: str
    """Also the stem of its PNG files."""
    title: str
    note: str
    records: list[RunRecord]


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "comparison"


def _section_lines(section: Section, out_dir: Path, colours: dict[str, str]) -> list[str]:
    lines = [f"## {section.title}", ""]
    if section.note:
        lines += [section.note, ""]
    table, footnotes = runs_table(section.records)
    lines += [table, ""] + [f"{n}\n" for n in footnotes]
    plotted = with_curves(section.records)
    missing = [r for r in section.records if not r.epochs]
    if plotted:
        stem = _file_stem(section.name)
        curves = plot_curves(plotted, section.title, out_dir / f"{stem}_curves.png", colours)
        lines += [f"![{section.title}: train loss and val top-1 by epoch]({curves.name})", ""]
        if speeds_differ(plotted):
            wall = plot_wall_time(plotted, f"{section.title}: val top-1 by wall time", out_dir / f"{stem}_wall_time.png",
                                  colours)
            lines += [f"![{section.title}: val top-1 by wall time]({wall.name})", ""]
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
    table, footnotes = runs_table(records)
    lines += [table, ""] + [f"{n}\n" for n in footnotes]
    failed = [r for r in records if r.status == FAILED]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- **{cell(r.name)}**: {cell(r.detail)}" for r in failed] + [""]
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
        load_run(suite_dir / run["dir"], name=run["name"], attempt=attempts.get(run["name"]),
                 planned_config=run.get("resolved"), note=run.get("note", ""))
        for run in manifest["runs"]
    ]
    by_name = {r.name: r for r in records}
    sections = [Section(c["name"], c["title"], c.get("note", ""), [by_name[n] for n in c["runs"] if n in by_name])
                for c in manifest.get("comparisons", [])]
    intro = [f"Suite `{manifest.get('source', '?')}`" + (f": {manifest['description']}" if manifest.get("description") else "."), ""]
    if manifest.get("quick"):
        intro += ["**Quick mode**: tiny models, a few epochs, the synthetic data set. These numbers check that the "
                  "whole chain works; they say nothing about the study's questions.", ""]
    commands = {run["name"]: shell_line(run["command"]) for run in manifest["runs"] if run.get("command")}
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
        records.append(load_run(run_dir))
    names = [r.name for r in records]
    for record in records:  # two runs/…/NAME directories with the same last part: tell them apart
        if names.count(record.name) > 1:
            record.name = str(record.run_dir)
    sections = [Section("runs", "All runs", "", records)]
    return write_report(title="Runs", intro=[], records=records, sections=sections, out_dir=Path(out_dir))
