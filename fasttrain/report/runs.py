"""Read a run directory into what the report shows: status, results, resolved config and per-epoch curves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasttrain.config import ConfigError, from_dict, read_toml, to_dict
from fasttrain.engine.time_to_accuracy import compile_seconds, seconds_to_val_top1, training_clock
from fasttrain.rundir import RunDir, read_metrics

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
    configuration: str = ""
    """The suite run this is a seed of (its name without /seedN); the record's own name otherwise."""
    seed: int | None = None
    compile_s: float | None = None
    """The first log window's excess over the median window (engine/time_to_accuracy.py)."""
    seconds_to_val: dict[str, float | None] = field(default_factory=dict)
    """Val top-1 level → training seconds to reach it (compile excluded); None: not reached."""
    clock: list[tuple[float, float]] = field(default_factory=list)
    """(training seconds, val top-1) at each evaluated epoch end, compile excluded."""

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


def epoch_records(run_dir: Path, records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Epoch records by epoch; a repeated epoch (a resumed run's replay) keeps its last record."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for rec in read_metrics(run_dir) if records is None else records:
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


def _add_timing(record: RunRecord, metrics: list[dict[str, Any]]) -> None:
    batch = (record.config or {}).get("train", {}).get("batch_size")
    if not batch:
        return
    record.compile_s = compile_seconds(metrics, batch)
    record.seconds_to_val = seconds_to_val_top1(metrics, record.compile_s)
    record.clock = training_clock(metrics, batch)


def load_run(run_dir: Path, *, name: str | None = None, attempt: dict[str, Any] | None = None,
             planned_config: dict[str, Any] | None = None, note: str = "", configuration: str | None = None,
             seed: int | None = None) -> RunRecord:
    """What the report knows of one run; `attempt` is the study runner's record of its last launch."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    record = RunRecord(name=name or run_dir.name, run_dir=run_dir, status=NOT_RUN, note=note,
                       config=_read_config(run_dir) or planned_config, epochs=epoch_records(run_dir, metrics),
                       configuration=configuration or name or run_dir.name, seed=seed)
    _add_timing(record, metrics)
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
