"""Run each case's first call in a child process first, so a CPU kernel that crashes the process
(a segfault inside oneDNN, say) becomes a skipped case with its reason instead of ending the benchmark.

Usage: `crashed = first_crashes("kernels_bench.measure.train_step:probe_step", cases)` → {case index: reason}.
The child imports the worker (`module:function`), calls it once per case in order and reports each
case it finished; when it dies, the first unfinished case is the one that crashed, and a fresh child
goes on with the cases after it.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

DONE = "crash_guard: done "


def _reason(returncode: int) -> str:
    import torch

    if returncode < 0:
        try:
            how = signal.Signals(-returncode).name
        except ValueError:
            how = f"signal {-returncode}"
    else:
        how = f"exit status {returncode}"
    return (f"its first step killed a child process ({how}): a crash inside a kernel of torch {torch.__version__} "
            "on this machine, so the case is skipped rather than run in the benchmark's process")


def first_crashes(worker: str, cases: list[dict], *, timeout_s: float = 600) -> dict[int, str]:
    """{index: reason} for every case whose first call kills a child process; {} when none does.

    A child that runs past `timeout_s` is stopped and its current case recorded as timed out."""
    crashed: dict[int, str] = {}
    start = 0
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    while start < len(cases):
        try:
            child = subprocess.run([sys.executable, "-m", "kernels_bench.measure.crash_guard", worker],
                                   input=json.dumps(cases[start:]), capture_output=True, text=True, env=env,
                                   timeout=timeout_s)
            finished = sum(1 for line in child.stdout.splitlines() if line.startswith(DONE))
            returncode, stderr = child.returncode, child.stderr
        except subprocess.TimeoutExpired as expired:
            out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
            finished = sum(1 for line in out.splitlines() if line.startswith(DONE))
            returncode, stderr = None, ""
        if returncode == 0:
            break
        failed = start + finished
        if failed >= len(cases):  # every case finished and the child died on the way out: nothing to skip
            break
        if returncode is None:
            crashed[failed] = f"its first step ran past {timeout_s:.0f} s in a child process"
        elif returncode > 0 and "Traceback" in stderr:  # a Python error, not a crash: the benchmark raises it itself
            break
        else:
            crashed[failed] = _reason(returncode)
        start = failed + 1
    return crashed


def _child(worker: str) -> None:
    module, _, name = worker.partition(":")
    call = getattr(importlib.import_module(module), name)
    for index, case in enumerate(json.loads(sys.stdin.read())):
        call(case)
        print(f"{DONE}{index}", flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
