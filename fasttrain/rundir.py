"""The run directory, torch-free: the names of what a run writes (one place) and reading its metrics.jsonl."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasttrain.atomic import lock_path_for


class _Entry:
    """A file or folder of a run directory: `RunDir(path).<entry>` is its path."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run_dir: RunDir | None, owner=None):
        return self if run_dir is None else run_dir.path / self.name


@dataclass(frozen=True)
class RunDir:
    """Where each output of a run lives; the only place these names are spelled."""

    path: Path

    results = _Entry("results.json")
    """Written last: its presence means the run finished."""
    checkpoints = _Entry("checkpoints")
    config = _Entry("config.toml")
    """The resolved config (TOML) the run was started with."""
    metrics = _Entry("metrics.jsonl")
    """One JSON line per logged step and per epoch."""
    best_model = _Entry("best_model.pt")
    """The plain model's weights at its best val top-1."""
    tensorboard = _Entry("tb")
    config_changes = _Entry("config_changes.jsonl")
    """Append-only: one JSON line per resume that changed a setting allowed to change (the step it took effect
    from, and old → new per key); config.toml is rewritten to the new config only then."""

    @property
    def lock(self) -> Path:
        """The lock a training holds for its whole run: `.<name>.lock` beside the directory (fasttrain.atomic), so
        a refused start creates nothing inside it."""
        return lock_path_for(self.path)

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (a torn last line is ignored)."""
    path = RunDir(Path(run_dir)).metrics
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out
