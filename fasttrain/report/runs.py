"""Read a run directory into what the report shows: status, results, resolved config and per-epoch curves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasttrain.config import ConfigError, from_dict, read_toml, to_dict
from fasttrain.rundir import read_metrics
from fasttrain.rundir import RunDir

FINISHED, FAILED, INCOMPLETE, RUNNING, NOT_RUN, UNREADABLE = (
    "finished", "failed", "incomplete", "running", "not run", "unreadable")


@dataclass
class RunRecord:
    name: str
    run_dir: Path
    status: str
    detail: str = ""
    """Why a run is not finished: the error line, the epoch it reached."""
    results: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    """The resolved config as nested plain data (sections → keys)."""
    epochs: list[dict[str, Any]] = field(default_factory=list)
    """The metrics.jsonl epoch records, one per epoch, in order."""
    note: str = ""

    @property
    def model(self) -> str:
        if self.results.get("model"):
            return self.results["model"]
        return (self.config or {}).get("model", {}).get("name", "?")

    @property
    def set_knobs(self) -> dict[str, Any]:
        model = dict((self.config or {}).get("model", {}))
        model.pop("name", None)
        return {k: v for k, v in model.items() if v is not None}

    @property
    def epochs_planned(self) -> int | None:
        if self.results.get("epochs") is not None:
            return self.results["epochs"]
        return (self.config or {}).get("train", {}).get("epochs")

    @property
    def epochs_done(self) -> int:
        if self.results.get("epochs_done") is not None:
            return self.results["epochs_done"]
        return self.epochs[-1]["epoch"] if self.epochs else 0


def epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    """Epoch records by epoch; a repeated epoch (a resumed run's replay) keeps its last record."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for rec in read_metrics(run_dir):
        if rec.get("kind") == "epoch" and isinstance(rec.get("epoch"), int):
            by_epoch[rec["epoch"]] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    path = RunDir(run_dir).config
    if not path.is_file():
        return None
    try:
        return to_dict(from_dict(read_toml(path), str(path)))
    except ConfigError:
        return None


def _read_results(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    path = RunDir(run_dir).results
    if not path.is_file():
        return None, ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return None, f"results.json unreadable: {err}"
    if not isinstance(data, dict):
        return None, "results.json is not a JSON object"
    return data, ""


def load_run(run_dir: Path, *, name: str | None = None, attempt: dict[str, Any] | None = None,
             planned_config: dict[str, Any] | None = None, note: str = "") -> RunRecord:
    """What the report knows of one run; `attempt` is the study runner's record of its last launch."""
    run_dir = Path(run_dir)
    record = RunRecord(name=name or run_dir.name, run_dir=run_dir, status=NOT_RUN, note=note,
                       config=_read_config(run_dir) or planned_config, epochs=epoch_records(run_dir))
    results, problem = _read_results(run_dir)
    if problem:
        record.status, record.detail = UNREADABLE, problem
        return record
    if results is not None:
        record.results = results
        if results.get("status") == "finished":
            record.status = FINISHED
            return record
        record.status, record.detail = INCOMPLETE, f"results.json status {results.get('status')!r}"
        return record
    attempt = attempt or {}
    progress = f"epoch {record.epochs_done}/{record.epochs_planned or '?'}"
    if attempt.get("status") == "failed":
        record.status = FAILED
        record.detail = f"exit {attempt.get('exit_code')}" + (f": {attempt['error']}" if attempt.get("error") else "")
        if record.epochs:
            record.detail += f" (reached {progress})"
    elif attempt.get("status") == "running":
        record.status, record.detail = RUNNING, f"{progress} (or the runner was killed)"
    elif record.epochs or RunDir(run_dir).checkpoints.is_dir() or RunDir(run_dir).config.is_file():
        record.status = INCOMPLETE
        record.detail = progress + (" (interrupted)" if attempt.get("status") == "interrupted" else "")
    return record
