"""The run directory: the names of what a run writes (one place), refusing to clobber a run, picking the checkpoint to resume from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasttrain.errors import UserError


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

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class ResumePlan:
    finished: bool = False
    """The run directory already holds results.json: nothing to do."""
    path: Path | None = None
    state: dict[str, Any] | None = None


def plan_resume(run_dir: Path, resume: str | None, log=print) -> ResumePlan:
    """Decide from `--resume` and the run directory's contents; never overwrites anything itself.

    A worker restarted by torchrun (TORCHELASTIC_RESTART_COUNT > 0) resumes as with `--resume auto`.
    """
    from fasttrain.engine import checkpoint as ckpt_io  # torch: not needed by readers of RunDir

    if resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = "auto"
    names = RunDir(run_dir)
    ckpts = ckpt_io.list_checkpoints(names.checkpoints)
    if resume is None:
        if names.results.exists():
            raise UserError(
                f"run directory {run_dir} already holds a finished run ({names.results.name}); "
                f"pass a new --out, or --resume auto to leave it as it is"
            )
        if ckpts:
            raise UserError(
                f"run directory {run_dir} holds an unfinished run (newest checkpoint {ckpts[-1].name}); "
                f"continue it with --resume auto, or pass a new --out"
            )
        return ResumePlan()
    if resume == "auto":
        if names.results.exists():
            return ResumePlan(finished=True)
        found = ckpt_io.newest_loadable(names.checkpoints, log=log)
        if found is None:
            if ckpts:
                log(f"warning: no loadable checkpoint in {names.checkpoints}; starting from scratch")
            return ResumePlan()
        return ResumePlan(path=found[0], state=found[1])
    path = Path(resume)
    return ResumePlan(path=path, state=ckpt_io.load_checkpoint(path))
