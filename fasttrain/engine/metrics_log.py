"""What a run shows as it goes: metrics.jsonl lines, TensorBoard scalars and the progress bar (rank 0 only; no torch import)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from fasttrain.atomic import atomic_write_text
from fasttrain.engine.run_dir import RunDir


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


class MetricsWriter:
    """Appends one JSON line per logged step and per epoch; mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, resume_step: int | None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = RunDir(run_dir).metrics
        if resume_step is not None:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(RunDir(run_dir).tensorboard), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint we resume from: they will be logged again, identically."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, kind: str, step: int, values: dict[str, Any], tb_prefix: str | None = None) -> None:
        rec = {"kind": kind, "step": step, **{k: _finite_or_none(v) for k, v in values.items()}}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None and tb_prefix is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self._tb.add_scalar(f"{tb_prefix}/{k}", v, step)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self._tb is not None:
            self._tb.close()


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


@contextlib.contextmanager
def progress_bar(enabled: bool, *, total: int, initial: int, desc: str):
    """A tqdm bar of one epoch's steps, or None when disabled (other ranks, log.progress = false)."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
    yield bar
    bar.close()
