"""The suite manifest (`<out>/suite.json`): the planned runs, the comparisons, each run's last attempt and command.

The study runner writes it before the first run and after each one; the report reads it, so
runs that never started or failed before writing anything still have a row. It lives below both
fasttrain.study and fasttrain.report: the study calls the report, the report never imports the study.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from fasttrain.atomic import atomic_write_json
from fasttrain.config import to_dict
from fasttrain.errors import UserError

MANIFEST_NAME = "suite.json"
MANIFEST_FORMAT = 1
LOGS_DIR = "logs"


def shell_line(command: list[str]) -> str:
    """A recorded command as one line a shell runs as is (the study prints it, the report lists it)."""
    return shlex.join(command)


def manifest_path(out_dir: Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def log_path(out_dir: Path, run_key: str) -> Path:
    """Where the runner keeps a run's console output (outside the run directory, which is the trainer's);
    a repeated run's key NAME/seedN puts its seeds' logs in logs/NAME/."""
    return Path(out_dir) / LOGS_DIR / f"{run_key}.log"


def read_manifest(out_dir: Path) -> dict[str, Any]:
    path = manifest_path(out_dir)
    if not path.is_file():
        raise UserError(f"{out_dir} holds no {MANIFEST_NAME}; pass the --out directory of `python -m fasttrain.study` "
                        f"(e.g. runs/seed), or run directories without --suite")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON ({err}); rerun the study to rewrite it") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not a fasttrain suite manifest (format {MANIFEST_FORMAT}); rerun the study to rewrite it")
    return data


def previous_attempts(out_dir: Path) -> dict[str, Any]:
    """Attempts recorded by an earlier invocation (kept for runs this one does not run)."""
    try:
        return dict(read_manifest(out_dir).get("attempts", {}))
    except UserError:
        return {}


def build_manifest(suite, planned, *, quick: bool, commands: dict[str, list[str]], attempts: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "suite": suite.name,
        "title": suite.title,
        "description": suite.description,
        "source": str(suite.path),
        "quick": quick,
        "runs": [
            {"name": run.name, "key": run.key, "seed": run.seed, "dir": run.key, "config": str(run.config_path),
             "overrides": list(run.overrides), "command": commands[run.key], "resolved": to_dict(run.cfg),
             "note": suite.run(run.name).note}
            for run in planned
        ],
        "comparisons": [
            {"name": c.name, "title": c.title, "runs": list(c.runs), "note": c.note} for c in suite.comparisons
        ],
        "attempts": {key: attempts[key] for key in (run.key for run in planned) if key in attempts},
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(manifest_path(out_dir), manifest)
