"""Study reports: a markdown table of runs beside the study's numbers, and PNG curves per comparison."""

from fasttrain.report.render import render_runs, render_suite
from fasttrain.report.runs import RunRecord, load_run

__all__ = ["RunRecord", "load_run", "render_runs", "render_suite"]
