"""Host syncs and host-blocked time of the hot path: 20 batches of each pipeline and 20 trainer steps (resnet18, eager).

Syncs: on CUDA torch.cuda.set_sync_debug_mode("warn") and every warning counted with the line that caused it; on CPU
(the dry run, and a CPU-checkable proof) every aten._local_scalar_dense call (what .item(), bool(tensor) and
float(tensor) go through) is counted the same way. The trainer's log steps read their figures on purpose; every
other step should read none.

Host-blocked time: sync warnings cannot see a wait that torch does not make (DALI's host wait in pipe.run(), a
pageable host-to-device copy). So each pipeline is also timed per batch with host timestamps around `next()`,
once with the GPU idle and once with a consumer that queues BUSY_MS of work on torch's stream per batch (timed
with CUDA events). A loader that never waits for torch's stream takes the same host time in both; one that does
waits for the queued work: host_blocked_ms_per_batch = busy median - idle median, up to the consumer's time.
"""

from __future__ import annotations

import collections
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels_bench.core import doing, emit, require_dali, synchronize
from kernels_bench.suites.dali_reuse import busy_work

BATCHES = 20
BUSY_MS = 20.0
STEPS = 20
LOG_EVERY = 10


def _where(frames) -> str:
    """The innermost line of fasttrain's own code (else of kernels_bench) that caused the sync."""
    for mine in ("fasttrain/", "kernels_bench/"):
        for frame in reversed(frames):
            if mine in frame.filename.replace("\\", "/") and "suites/sync_audit" not in frame.filename.replace("\\", "/"):
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


def _host_ms_per_batch(pipe, epoch: int, busy, device: torch.device) -> tuple[float, float]:
    """(median host ms spent in next() per batch, median device ms of the consumer's work per batch)."""
    pipe.set_epoch(epoch)
    batches = iter(pipe)
    host, device_ms, events = [], [], []
    while True:
        started = time.perf_counter()
        batch = next(batches, None)
        host.append((time.perf_counter() - started) * 1000)
        if batch is None:
            host.pop()
            break
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            busy()
            end.record()
            events.append((begin, end))
        else:
            busy()
    synchronize(device)
    device_ms = [begin.elapsed_time(end) for begin, end in events]
    return statistics.median(host[1:] or host), statistics.median(device_ms) if device_ms else 0.0


def _pipelines(device: torch.device, smoke: bool, required_dali: bool) -> dict:
    from fasttrain.config import DataConfig
    from fasttrain.data.pipelines import build_pipeline

    batch, size = (8, 32) if smoke else (256, 64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * BATCHES, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 200, batch * BATCHES).astype(np.int64)
    busy = busy_work(device, BUSY_MS)
    found = {}
    for name in ("torch", "torch_nonresident", "dali", "reference"):
        if name == "dali" and not require_dali(required_dali):
            found[name] = {"status": "skipped", "reason": "nvidia.dali is not importable"}
            continue
        cfg = DataConfig(backend="torch" if name == "torch_nonresident" else name, image_size=size, augment="rrc",
                         **({"device_memory_cap_gb": 0.0} if name == "torch_nonresident" else {}))
        with doing(f"sync_audit pipeline {name}"):
            pipe = build_pipeline(cfg, images, labels, train=True, batch_size=batch, device=device, seed=0)
            next(iter(pipe))  # start-up (workers, DALI graph) is not the hot path
            pipe.set_epoch(1)
            with _counter(device) as counter:
                seen = sum(1 for _ in pipe)
            idle_ms, _ = _host_ms_per_batch(pipe, 2, lambda: None, device)
            busy_ms, consumer_ms = _host_ms_per_batch(pipe, 3, busy, device)
        found[name] = {"batches": seen, "syncs": sum(counter.where.values()), "where": dict(counter.where),
                       "host_ms_per_batch_gpu_idle": round(idle_ms, 3), "host_ms_per_batch_gpu_busy": round(busy_ms, 3),
                       "consumer_device_ms_per_batch": round(consumer_ms, 3),
                       "host_blocked_ms_per_batch": round(max(0.0, busy_ms - idle_ms), 3)}
        emit("sync_audit", {"pipeline": name, **{k: v for k, v in found[name].items() if k != "where"}})
        del pipe
    return found


def _trainer(device: torch.device, smoke: bool) -> dict:
    from kernels_bench.core import synthetic_data, train_for_steps

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


def run(args) -> dict:
    device = torch.device(args.device)
    pipelines = _pipelines(device, args.smoke, getattr(args, "require_dali", False))
    with doing("sync_audit trainer"):
        trainer = _trainer(device, args.smoke)
    emit("sync_audit", {"trainer": {k: v for k, v in trainer.items() if k != "where"}})
    method = ("torch.cuda.set_sync_debug_mode('warn') warnings" if device.type == "cuda"
              else "aten._local_scalar_dense calls (TorchDispatchMode)")
    return {"method": method, "pipelines": pipelines, "trainer": trainer,
            "pipeline_syncs": {name: p.get("syncs") for name, p in pipelines.items()},
            "host_blocked_ms_per_batch": {name: p.get("host_blocked_ms_per_batch") for name, p in pipelines.items()},
            "blocked_note": f"host ms in next() per batch with a consumer queuing {BUSY_MS:g} ms of GPU work per batch, minus "
                            "the same with the GPU idle" + ("" if device.type == "cuda" else
                                                             "; on CPU nothing is queued, so this is ~0 by construction")}


def add_arguments(parser) -> None:
    parser.add_argument("--require-dali", action="store_true", help="fail, rather than skip dali, when nvidia.dali is not importable")
