"""Host syncs of the hot path: 20 batches of each pipeline and 20 trainer steps (resnet18, compile off).

On CUDA: torch.cuda.set_sync_debug_mode("warn") and every warning counted with the line that caused it.
On CPU (the dry run, and a CPU-checkable proof): every aten._local_scalar_dense call (what .item(),
bool(tensor) and float(tensor) go through: the host reading a device value) is counted the same way.
The trainer's log steps read their figures on purpose; every other step should read none.
"""

from __future__ import annotations

import collections
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels_bench.gpu_stages.common import stage_main

BATCHES = 20
STEPS = 20
LOG_EVERY = 10


def _where(frames) -> str:
    """The innermost line of fasttrain's own code (else of kernels_bench) that caused the sync."""
    for mine in ("fasttrain/", "kernels_bench/"):
        for frame in reversed(frames):
            if mine in frame.filename.replace("\\", "/") and "gpu_stages" not in frame.filename:
                return f"{mine}{frame.filename.replace(chr(92), '/').split(mine, 1)[1]}:{frame.lineno}"
    return "elsewhere"


class HostReads(TorchDispatchMode):
    """Counts aten._local_scalar_dense calls by the line that made them."""

    def __init__(self):
        super().__init__()
        self.where = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.where[_where(traceback.extract_stack())] += 1
        return func(*args, **(kwargs or {}))


class SyncWarnings:
    """CUDA's own sync detector: set_sync_debug_mode("warn"), warnings recorded by the line that caused them."""

    def __enter__(self):
        self.where = collections.Counter()
        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        for record in self._records:
            if "synchroniz" in str(record.message):
                self.where[f"{record.filename.split('site-packages/')[-1]}:{record.lineno}"] += 1
        return False


def _counter(device: torch.device):
    return SyncWarnings() if device.type == "cuda" else HostReads()


def _pipelines(device: torch.device, smoke: bool) -> dict:
    from fasttrain.config import DataConfig
    from fasttrain.data.pipelines import build_pipeline
    from fasttrain.data.pipelines.backend_choice import dali_importable

    batch, size = (8, 32) if smoke else (256, 64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * BATCHES, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 200, batch * BATCHES).astype(np.int64)
    found = {}
    for backend in ("torch", "dali", "reference"):
        if backend == "dali" and not dali_importable():
            found[backend] = {"status": "skipped", "reason": "nvidia.dali is not importable"}
            continue
        pipe = build_pipeline(DataConfig(backend=backend, image_size=size, augment="rrc"), images, labels, train=True,
                              batch_size=batch, device=device, seed=0)
        next(iter(pipe))  # start-up (workers, DALI graph) is not the hot path
        pipe.set_epoch(1)
        with _counter(device) as counter:
            seen = sum(1 for _ in pipe)
        found[backend] = {"batches": seen, "syncs": sum(counter.where.values()), "where": dict(counter.where)}
    return found


def _trainer(device: torch.device, smoke: bool) -> dict:
    from kernels_bench.measure.trainer_run import synthetic_data, train_for_steps

    with tempfile.TemporaryDirectory(prefix="sync_audit_") as work:
        root = Path(work)
        size, batch = (32, 8) if smoke else (64, 256)
        data = synthetic_data(root / "synthetic", image_size=size, classes=4 if smoke else 20,
                              per_class=(batch * STEPS) // (4 if smoke else 20) + 1, test_per_class=1)
        sections = {"data": {**data, "backend": "auto"}, "model": {"name": "resnet18", **({"width": 0.25} if smoke else {})},
                    "train": {"batch_size": batch, "max_steps": STEPS, "epochs": 1000},
                    "log": {"every_steps": LOG_EVERY}, "compile": {"mode": "off"}}
        with _counter(device) as counter:
            trainer = train_for_steps(sections, root / "run", str(device))
        steps = trainer.results["steps"]
    return {"steps": steps, "log_steps": steps // LOG_EVERY, "syncs": sum(counter.where.values()),
            "where": dict(counter.where),
            "note": "fit() as a whole: set-up, log steps and the end-of-run evaluation read values on purpose; "
                    "`where` shows which lines did"}


def body(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA GPU"}
    pipelines = _pipelines(device, args.smoke)
    trainer = _trainer(device, args.smoke)
    method = ("torch.cuda.set_sync_debug_mode('warn') warnings" if device.type == "cuda"
              else "aten._local_scalar_dense calls (TorchDispatchMode)")
    return {"status": "ok", "method": method, "pipelines": pipelines, "trainer": trainer,
            "pipeline_syncs": {name: p.get("syncs") for name, p in pipelines.items()}}


if __name__ == "__main__":
    raise SystemExit(stage_main("sync_audit", body))
