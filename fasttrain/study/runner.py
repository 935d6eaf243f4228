"""Run planned runs one after another as trainer subprocesses; skip finished ones, go on past failures."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fasttrain.rundir import RunDir
from fasttrain.study.plan import PlannedRun, child_environment, local_command
from fasttrain.suite_manifest import log_path, shell_line, write_manifest

FINISHED, SKIPPED, FAILED = "finished", "skipped", "failed"


@dataclass(frozen=True)
class RunOutcome:
    name: str
    """The run's key: NAME, or NAME/seedN."""
    status: str
    """finished (ran to results.json now), skipped (had results.json already) or failed."""
    exit_code: int | None
    seconds: float
    error: str = ""
    """The run's last error line, for failed runs."""


def is_finished(run_dir: Path) -> bool:
    return RunDir(run_dir).results.is_file()


def last_error_line(log_text: str) -> str:
    """The trainer's `error: ...` line, else the last line of a traceback, else the last line printed."""
    lines = [part.strip() for line in log_text.splitlines() for part in line.split("\r")]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1] if lines else ""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _echo(chunk: bytes) -> None:
    out = getattr(sys.stdout, "buffer", None)
    if out is not None:
        out.write(chunk)
    else:  # a text-only stdout (e.g. redirected into a StringIO)
        sys.stdout.write(chunk.decode("utf-8", errors="replace"))
    sys.stdout.flush()


def _stream(command: list[str], log_file: Path, echo: bool) -> int:
    """Run `command`, copying its output as it comes to the log file and (when echo) to our stdout."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n$ {shell_line(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=child_environment())
        try:
            while True:
                chunk = os.read(process.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if echo:
                    _echo(chunk)
            return process.wait()
        except BaseException:
            # Ctrl-C reaches the child too (same process group); give it time to stop cleanly.
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        finally:
            process.stdout.close()


def run_all(planned: list[PlannedRun], *, selected: list[str], out_dir: Path, nproc: int, manifest: dict[str, Any],
            echo: bool = True, say: Callable[[str], None] = print) -> list[RunOutcome]:
    """Run the selected runs in order; record each attempt in the manifest as soon as it ends."""
    outcomes = []
    chosen = [run for run in planned if run.name in selected]
    for index, run in enumerate(chosen, 1):
        head = f"[{index}/{len(chosen)}] {run.key}"
        if is_finished(run.run_dir):
            say(f"{head}: finished already ({run.run_dir / 'results.json'}); skipping")
            outcomes.append(RunOutcome(run.key, SKIPPED, 0, 0.0))
            continue
        command = local_command(run, nproc=nproc)
        log_file = log_path(out_dir, run.key)
        say(f"{head}: {shell_line(command)}")
        started, t0 = _now(), time.perf_counter()
        manifest["attempts"][run.key] = {"status": "running", "started": started, "log": str(log_file)}
        write_manifest(out_dir, manifest)
        try:
            code = _stream(command, log_file, echo)
        except KeyboardInterrupt:
            manifest["attempts"][run.key] = {"status": "interrupted", "exit_code": None, "started": started,
                                              "ended": _now(), "seconds": time.perf_counter() - t0, "log": str(log_file)}
            write_manifest(out_dir, manifest)
            raise
        seconds = time.perf_counter() - t0
        ok = code == 0 and is_finished(run.run_dir)
        error = ""
        if not ok:
            error = last_error_line(log_file.read_text(encoding="utf-8", errors="replace"))
            if code == 0:
                error = f"exited 0 without writing results.json ({error})"
        manifest["attempts"][run.key] = {"status": FINISHED if ok else FAILED, "exit_code": code, "started": started,
                                          "ended": _now(), "seconds": seconds, "log": str(log_file), "error": error}
        write_manifest(out_dir, manifest)
        outcome = RunOutcome(run.key, FINISHED if ok else FAILED, code, seconds, error)
        say(f"{head}: {outcome.status} in {seconds:.0f} s" + (f" (exit {code}): {error}; log: {log_file}" if not ok else ""))
        outcomes.append(outcome)
    return outcomes
