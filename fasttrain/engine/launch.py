"""Wires a resolved config to a run: distributed init → the data cache (rank 0 builds it) → Trainer → results."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

from fasttrain.atomic import LockHeld, atomic_write_text, exclusive_lock_or_fail
from fasttrain.config import Config, DataConfig, from_dict, to_dict, to_toml
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.engine.distributed import DistInfo, barrier, broadcast_object, init_distributed, shutdown
from fasttrain.engine.runtime import check_model_config
from fasttrain.rundir import RunDir
from fasttrain.errors import UserError


def open_dataset(cfg: DataConfig, info: DistInfo):
    """Rank 0 builds the cache while the others wait; then every rank opens it.

    Rank 0's error reaches every rank, so no rank waits on a barrier that will never come.
    """
    from fasttrain.data.cache import open_cache
    from fasttrain.data.prepare import build_cache, cache_dir_for

    error = None
    if info.is_main:
        try:
            cache = build_cache(cfg)
        except UserError as err:
            error = str(err)
    error = broadcast_object(error, info)
    if error is not None:
        raise UserError(error)
    return cache if info.is_main else open_cache(cache_dir_for(cfg))


def _oom_error(cfg: Config, info: DistInfo) -> UserError:
    per_rank = cfg.train.batch_size // info.world_size
    return UserError(
        f"CUDA out of memory at a per-rank batch of {per_rank}; lower it, e.g. --set train.batch_size={max(info.world_size, cfg.train.batch_size // 2)} "
        f"(or raise train.grad_accum, or use more GPUs)"
    )


def _process_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _lock_patience_s(holder: dict) -> float:
    """How long to wait for a held run-directory lock: a restarted torchrun worker waits for the previous attempt's
    workers to be stopped; a holder that has died on this host is gone as soon as its forked children exit."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return 60.0
    if holder.get("host") == socket.gethostname() and not _process_alive(holder.get("pid")):
        return 30.0
    return 0.0


@contextlib.contextmanager
def holding_run_dir(run_dir: Path, info: DistInfo):
    """Rank 0 holds the run directory's lock for the whole run (RunDir.lock, released by the kernel when the process
    dies); when another process holds it, every rank stops with one line naming that holder, having touched nothing."""
    with contextlib.ExitStack() as stack:
        refused = None
        if info.is_main:
            since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
            try:
                stack.enter_context(exclusive_lock_or_fail(run_dir, me, _lock_patience_s))
            except OSError as err:  # every rank must hear of it, or the others wait for rank 0 until the timeout
                refused = (f"cannot lock run directory {run_dir} ({err.strerror}: {err.filename}); check that "
                           f"{run_dir.parent} is a writable folder, or pass another --out")
            except LockHeld as held:
                h = held.holder
                who = f"pid {h['pid']} on {h.get('host', '?')} since {h.get('since', '?')}" if "pid" in h else "another process"
                refused = (f"run directory {run_dir} is in use by another training ({who}); wait for it to end or "
                           f"stop it, or pass a new --out")
        refused = broadcast_object(refused, info)
        if refused is not None:
            raise UserError(refused)
        yield


def record_config(cfg: Config, cfg_name: str, run_dir: RunDir, changes: dict[str, list], step: int) -> None:
    """config.toml holds the config in force; an accepted change at a resume is appended to config_changes.jsonl
    (with the step it takes effect after) before config.toml is rewritten."""
    if changes:
        line = json.dumps({"step": step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "changes": changes})
        with open(run_dir.config_changes, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    atomic_write_text(run_dir.config, f"# resolved config of {cfg_name}\n" + to_toml(cfg))


def run_training(cfg: Config, *, cfg_name: str, run_dir: Path, resume: str | None) -> dict[str, Any] | None:
    info = init_distributed(cfg.train.device, cfg.dist.backend, cfg.dist.timeout_s)
    log = print if info.is_main else (lambda msg: None)
    try:
        check_model_config(cfg)  # a wrong model name or knob fails before any data work
        with holding_run_dir(run_dir, info):  # before anything reads the run directory: it may be another's
            results = _train_holding_lock(cfg, cfg_name, run_dir, resume, info, log)
        if results is None:
            return None
        summary = [f"done: {run_dir} ({results['model']}, {results['params']:,} params) in {results['wall_time_s']:.0f}s"]
        for key, label in (("test_top1", "test top-1"), ("test_top5", "top-5"), ("best_val_top1", "best val top-1"),
                           ("ema_test_top1", "EMA test top-1"), ("images_per_s", "images/s")):
            if results.get(key) is not None:
                summary.append(f"{label} {results[key]:.4f}" if key != "images_per_s" else f"{label} {results[key]:.0f}")
        log(" | ".join(summary) + f" | {RunDir(run_dir).results}")
        return results
    finally:
        shutdown(info)


def _train_holding_lock(cfg: Config, cfg_name: str, run_dir: Path, resume: str | None, info: DistInfo,
                        log) -> dict[str, Any] | None:
    from fasttrain.engine.trainer import Trainer

    start = ckpt_io.resume_point(run_dir, resume, log=log)
    if start.finished:
        log(f"{run_dir} already holds a finished run (results.json); nothing to do")
        return None
    changes, trained = {}, cfg
    if start.state is not None:  # a changed config is refused before any data work
        stored = from_dict(start.state["config"], str(start.path))
        # "from the data" (empty data.mean/std) continues with the values the run was trained with (the checkpoint's)
        trained = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mean=cfg.data.mean or stored.data.mean,
                                                                    std=cfg.data.std or stored.data.std))
        changes = ckpt_io.changed_on_resume(to_dict(stored), to_dict(trained),
                                            epoch=start.state["epoch"], checkpoint=start.path)
    cache = open_dataset(cfg.data, info)
    try:
        trainer = Trainer(trained, cfg_name=cfg_name, run_dir=run_dir, info=info,
                          cache=cache, resume_state=start.state, resume_path=start.path, log=log)
        if info.is_main:  # only now: a refused start or resume leaves the run directory as it was
            if changes:
                log(f"config: changed at this resume, from step {trainer.step} on: "
                    + "; ".join(f"{key} {old!r} → {new!r}" for key, (old, new) in changes.items())
                    + f" (recorded in {RunDir(run_dir).config_changes.name})")
            record_config(cfg, cfg_name, RunDir(run_dir), changes, trainer.step)
        results = trainer.fit()
        # Every rank is done with the process group before any tears it down: a rank that destroys it while
        # another's gloo pairs are still open can abort that rank ("terminate called without an active exception").
        barrier(info)
    except torch.OutOfMemoryError:
        raise _oom_error(cfg, info) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"disk full while writing {err.filename or run_dir} ({err.strerror}); free space, then "
                        f"rerun with --resume auto (the newest complete checkpoint is intact)") from None
    return results

