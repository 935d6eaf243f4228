"""Tiny deterministic CPU training runs for the fault, bad-input and security tests: commands, runners, snapshots."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fasttrain.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.toml"

# 4 classes x 40 train images of 32x32, a 77k-parameter ResNet, batch 16: 8 steps per epoch.
TINY = [
    "data.source=synthetic", "data.image_size=32", "data.synth_classes=4", "data.synth_per_class=40",
    "data.synth_val_per_class=10", "data.backend=torch", "data.prepare_workers=1",
    "model.name=resnet18", "model.width=0.125", "model.layers=[1,1,1,1]",
    # on the CPU: the bit-exact resume and fault tests need CPU determinism (on a CUDA machine the default device would
    # be the GPU, where some backward kernels have no deterministic version); a test that means CUDA sets it after
    "train.device=cpu", "train.batch_size=16", "train.amp=off", "train.deterministic=true", "log.every_steps=1",
    "log.progress=false", "log.tensorboard=false",
]
STEPS_PER_EPOCH = 8


def tiny_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    """`python -m fasttrain` arguments of a tiny run on `data_root` into `out`; `extra` are more --set items."""
    args = ["--cfg", str(QUICKSTART), "--out", str(out), "--set", f'data.root="{data_root}"']
    for item in TINY + list(extra):
        args += ["--set", item]
    return args


def tiny_cache_dir(data_root: Path) -> Path:
    """The cache the tiny run reads under `data_root`: `<data_root>/process/32px-<hash>/`."""
    from fasttrain.config import load_config
    from fasttrain.data.prepare import cache_dir_for

    return cache_dir_for(load_config(QUICKSTART, [f'data.root="{data_root}"', *TINY]).data)


def tiny_trainer(data_root: Path, out: Path, *extra: str):
    """An in-process Trainer of the tiny run (built as `python -m fasttrain` builds it, single process; CPU, as TINY
    says, unless `extra` sets train.device)."""
    from fasttrain.config import load_config
    from fasttrain.engine.launch import open_dataset
    from fasttrain.engine.distributed import DistInfo
    from fasttrain.engine.trainer import Trainer

    cfg = load_config(QUICKSTART, [f'data.root="{data_root}"', *TINY, *extra])
    info = DistInfo(0, 1, 0, torch.device(cfg.train.device))
    return Trainer(cfg, cfg_name="tiny", run_dir=out, info=info, cache=open_dataset(cfg.data, info), log=lambda m: None)


# One thread per run, in a child or in this process: equal losses bit for bit, and on a busy 2-core machine a
# tiny model runs many times faster than with threads that wait on each other.
RUN_THREADS = 1


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child run (RUN_THREADS threads, unbuffered output)."""
    return dict(os.environ, **{"OMP_NUM_THREADS": str(RUN_THREADS), "PYTHONUNBUFFERED": "1", **extra})


def run_cli(args: list[str], *, module: str = "fasttrain", env: dict | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in the repository root; with `check`, a non-zero exit fails with its output."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or subprocess_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


class Outcome:
    """Exit status and output of one in-process command."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __repr__(self) -> str:
        return f"Outcome(exit {self.returncode}, stdout={self.stdout[-1500:]!r}, stderr={self.stderr[-1500:]!r})"


def run_in_process(args: list[str], *, check: bool = False) -> Outcome:
    """`python -m fasttrain <args>` without a new interpreter (torch is imported once): same code path from
    `main` through `run_cli`, same exit status. Global torch switches are put back afterwards."""
    from fasttrain.__main__ import main
    from fasttrain.errors import run_cli as cli

    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    torch.set_num_threads(RUN_THREADS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli(lambda: main(list(args)), debug=False)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    outcome = Outcome(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(repr(outcome))
    return outcome


def step_records(run_dir: Path) -> list[dict]:
    """The logged per-step numbers that a resumed run must reproduce exactly (timings left out)."""
    keep = ("step", "epoch", "loss", "top1", "lr", "grad_norm")
    records = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines() if line.strip()]
    return [{k: r.get(k) for k in keep} for r in records if r["kind"] == "step"]


def epoch_records(run_dir: Path) -> list[dict]:
    keep = ("step", "epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5")
    records = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines() if line.strip()]
    return [{k: r.get(k) for k in keep} for r in records if r["kind"] == "epoch"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    newest = sorted(RunDir(run_dir).checkpoints.glob("ckpt_*.pt"))[-1]
    return torch.load(newest, map_location="cpu", weights_only=True)["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(*dirs: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `dirs` (or a file itself) → (mtime_ns, size, sha256): equal snapshots mean nothing was written."""
    state = {}
    for top in dirs:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for path in files:
            stat = path.stat()
            state[str(path)] = (stat.st_mtime_ns, stat.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def wait_for(predicate, *, timeout: float, interval: float = 0.01, proc: subprocess.Popen | None = None):
    """Poll until `predicate()` is truthy; fail early if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before the awaited state")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def logged_steps(run_dir: Path) -> int:
    """The highest step in metrics.jsonl so far (0 when none)."""
    path = RunDir(run_dir).metrics
    if not path.exists():
        return 0
    best = 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        best = max(best, record.get("step", 0))
    return best


# --- injected write failures -----------------------------------------------------------------------

def disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FailingWrites:
    """Stands in for the `os` module inside fasttrain.atomic: the `nth` temporary file whose name contains
    `name_part` gets `fraction` of its bytes written (and fsynced), then `fail()` runs — a full disk
    (`disk_full`) or a kill (`kill_self`) in the middle of a write."""

    def __init__(self, name_part: str, *, nth: int = 1, fail=disk_full, fraction: float = 0.5):
        self.name_part, self.nth, self.fail, self.fraction = name_part, nth, fail, fraction
        self.seen = 0

    def __getattr__(self, name: str):
        return getattr(os, name)

    def fdopen(self, fd: int, *args, **kwargs):
        handle = os.fdopen(fd, *args, **kwargs)
        if self.name_part not in Path(os.readlink(f"/proc/self/fd/{fd}")).name:
            return handle
        self.seen += 1
        return _BreakingFile(handle, self) if self.seen == self.nth else handle


class _BreakingFile:
    def __init__(self, handle, plan: FailingWrites):
        self._handle, self._plan = handle, plan

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        return False

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def write(self, data):
        data = memoryview(data).cast("B") if not isinstance(data, str) else data
        self._handle.write(data[: int(len(data) * self._plan.fraction)])
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._plan.fail()
