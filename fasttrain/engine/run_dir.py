"""The run directory: refuse to clobber a run, pick the checkpoint to resume from, record the config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.errors import UserError


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
    if resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = "auto"
    results = run_dir / "results.json"
    ckpts = ckpt_io.list_checkpoints(run_dir / "checkpoints")
    if resume is None:
        if results.exists():
            raise UserError(
                f"run directory {run_dir} already holds a finished run (results.json); "
                f"pass a new --out, or --resume auto to leave it as it is"
            )
        if ckpts:
            raise UserError(
                f"run directory {run_dir} holds an unfinished run (newest checkpoint {ckpts[-1].name}); "
                f"continue it with --resume auto, or pass a new --out"
            )
        return ResumePlan()
    if resume == "auto":
        if results.exists():
            return ResumePlan(finished=True)
        found = ckpt_io.newest_loadable(run_dir / "checkpoints", log=log)
        if found is None:
            if ckpts:
                log(f"warning: no loadable checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
            return ResumePlan()
        return ResumePlan(path=found[0], state=found[1])
    path = Path(resume)
    return ResumePlan(path=path, state=ckpt_io.load_checkpoint(path))
