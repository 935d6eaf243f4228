"""The measurement core every suite shares: timing, FLOP peaks, versions, crash guard, the Trainer harness, case records.

- Timing: warm-up first, CUDA events on a GPU, the median of repeats (`time_calls`); compile seconds apart.
- Peaks: the bf16 matmul peak measured now and the datasheet peak of the detected GPU (MFU denominators).
- Versions and environment: what a figure depends on (torch, triton, DALI, timm, GPU, driver, load).
- Crash guard: a case's first call in a child process, so a kernel that kills the process skips one case.
- Harness: the real Trainer built from sections of config values (`build_trainer`, `train_for_steps`) and
  one Trainer.train_step on a resident synthetic batch (`SyntheticTrainStep`): the model-only cost.
- Case records: `emit` appends each finished case to the JSON-lines file named by $KERNELS_BENCH_CASES at
  once (flushed and fsynced), and `doing` names the case in progress, so a run stopped by a budget
  (SIGINT from `timeout --signal=INT`) keeps every finished case and says where it was.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------- case records

CASES_ENV = "KERNELS_BENCH_CASES"
_position: list[str] = []
_interrupted_at: list[str] = []  # the position when a KeyboardInterrupt left it (the innermost one)


def emit(suite: str, case: dict) -> None:
    """Append one finished case to $KERNELS_BENCH_CASES (JSON lines) now, so it survives a later kill."""
    path = os.environ.get(CASES_ENV)
    if not path:
        return
    line = json.dumps({"suite": suite, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **case}, default=str)
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def doing(what: str) -> Iterator[None]:
    """Name the work in progress (printed when the run is interrupted, and at its start)."""
    _position.append(what)
    print(f"... {' / '.join(_position)}", flush=True)
    try:
        yield
    except KeyboardInterrupt:
        if not _interrupted_at:
            _interrupted_at.append(" / ".join(_position))
        raise
    finally:
        _position.pop()


def position() -> str:
    """The work in progress, or where an interrupt stopped it."""
    return (_interrupted_at[0] if _interrupted_at else " / ".join(_position)) or "(between cases)"


# ----------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    """Wall time of the warm-up calls (compilation, autotuning, allocator growth land here)."""
    seconds: list[float]
    """Seconds per call of each timed repeat."""

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats: how steady the figure is on a busy machine."""
        return (max(self.seconds) - min(self.seconds)) / self.median_s if self.median_s > 0 else 0.0


def synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device | str, *, warmup: int, repeats: int,
               calls_per_repeat: int = 1) -> Timing:
    """Run `fn` `warmup` times untimed, then `repeats` × `calls_per_repeat` times timed.

    On CUDA each repeat is bracketed by events, so only device time between them counts and no
    host sync happens inside a repeat; on CPU the wall clock is read around each repeat.
    """
    device = torch.device(device)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(calls_per_repeat):
                fn()
            end.record()
            end.synchronize()
            seconds.append(begin.elapsed_time(end) / 1000 / calls_per_repeat)
        else:
            begin_s = time.perf_counter()
            for _ in range(calls_per_repeat):
                fn()
            seconds.append((time.perf_counter() - begin_s) / calls_per_repeat)
    return Timing(warmup_s, seconds)


def first_call_seconds(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall seconds of one call, synchronized: a compiled step's first call is its compilation."""
    synchronize(torch.device(device))
    started = time.perf_counter()
    fn()
    synchronize(torch.device(device))
    return time.perf_counter() - started


def inductor_cache_state() -> dict:
    """Where torch.compile keeps its compiled artefacts and how many files are there now: with none, a compile
    is cold; with the same graph's files there (a second call on the same machine), it is warm."""
    import getpass
    import tempfile

    # the documented default of TORCHINDUCTOR_CACHE_DIR (torch.compile's docs), read without torch internals
    where = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}")
    files = sum(len(names) for _, _, names in os.walk(where)) if where.exists() else 0
    return {"dir": str(where), "files": files, "from_env": "TORCHINDUCTOR_CACHE_DIR" in os.environ}


def reset_peak_memory(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS so far (it never goes down,
    so on CPU a case's figure also covers every case before it)."""
    from fasttrain.engine.metrics import peak_memory_mb as trainer_peak

    return round(trainer_peak(torch.device(device)), 1)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def apply_backend_settings(device: torch.device) -> None:
    """The backend flags (TF32, cudnn.benchmark) the Trainer sets with its default [train] values: every side of a
    comparison runs under them, so a model-only figure is not timed under other settings."""
    from fasttrain.config import TrainConfig
    from fasttrain.engine.runtime import configure_backends

    configure_backends(TrainConfig(), torch.device(device))


# ----------------------------------------------------------------------------------------------- peaks


def bf16_matmul_peak_flops(device: torch.device, *, size: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of a large bf16 matmul on this GPU, measured now: the denominator of MFU
    (a datasheet figure assumes clocks and cooling this machine may not have)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    timing = time_calls(lambda: torch.mm(a, b), device, warmup=3, repeats=repeats, calls_per_repeat=5)
    return 2 * size**3 / min(timing.seconds)  # the best repeat: a peak, not a typical figure


def datasheet_peak(device: torch.device) -> dict | None:
    """{"name", "flops"}: the vendor's dense bf16 peak of the detected GPU (fasttrain.engine.metrics' table),
    or None (CPU, or a GPU the table lacks)."""
    from fasttrain.engine.metrics import device_peak_tflops

    tflops, name = device_peak_tflops(torch.device(device))
    return {"name": name, "flops": tflops * 1e12} if tflops else None


# ----------------------------------------------------------------------------------------------- versions


def dali_importable() -> bool:
    from fasttrain.data.pipelines.backend_choice import dali_importable as importable

    return importable()


def require_dali(required: bool) -> bool:
    """Whether DALI can be used here; with `required` (a GPU check whose plan installed DALI), its absence is a
    user-visible failure instead of a quietly skipped backend."""
    if dali_importable():
        return True
    if required:
        from fasttrain.errors import UserError

        raise UserError("nvidia.dali is not importable but this run requires it (--require-dali): install the "
                        "carried wheel first (python3 -m kernels_bench.dali_wheel install), or drop --require-dali")
    return False


def _module_version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:
        return None
    return getattr(module, "__version__", "unknown")


def gpu_driver() -> str | None:
    """The NVIDIA driver version as nvidia-smi reports it, or None where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def software_versions(device: str) -> dict:
    """torch/torchvision/triton/DALI/timm/CUDA versions and, on CUDA, the GPU's name (None: not importable)."""
    import torchvision

    found = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
             "triton": _module_version("triton"), "dali": _module_version("nvidia.dali") if dali_importable() else None,
             "timm": _module_version("timm"), "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        found["gpu"] = torch.cuda.get_device_name()
        found["cudnn"] = torch.backends.cudnn.version()
    return found


def environment() -> dict:
    from fasttrain.data.prepare import default_workers  # the cores this process may run on

    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_cores": default_workers(),
            "processor": platform.processor() or platform.machine(),
            # other work on the machine skews throughput figures; record how busy it was
            "load_average_1m_at_start": load_average(),
            # on a shared CPU, spinning OpenMP threads (the default) can slow a step tenfold; record the policy
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


# ----------------------------------------------------------------------------------------------- crash guard

_DONE = "crash_guard: done "


def _crash_reason(returncode: int) -> str:
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

    The child imports the worker (`module:function`), calls it once per case in order and reports each case it
    finished; when it dies, the first unfinished case is the one that crashed, and a fresh child goes on with the
    cases after it. A child that runs past `timeout_s` is stopped and its current case recorded as timed out."""
    crashed: dict[int, str] = {}
    start = 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    while start < len(cases):
        try:
            child = subprocess.run([sys.executable, "-m", "kernels_bench.core", worker],
                                   input=json.dumps(cases[start:]), capture_output=True, text=True, env=env,
                                   timeout=timeout_s)
            finished = sum(1 for line in child.stdout.splitlines() if line.startswith(_DONE))
            returncode, stderr = child.returncode, child.stderr
        except subprocess.TimeoutExpired as expired:
            out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
            finished = sum(1 for line in out.splitlines() if line.startswith(_DONE))
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
            crashed[failed] = _crash_reason(returncode)
        start = failed + 1
    return crashed


def _crash_guard_child(worker: str) -> None:
    module, _, name = worker.partition(":")
    call = getattr(importlib.import_module(module), name)
    for index, case in enumerate(json.loads(sys.stdin.read())):
        call(case)
        print(f"{_DONE}{index}", flush=True)


# ----------------------------------------------------------------------------------------------- trainer harness


def synthetic_data(root: Path, *, image_size: int, classes: int, per_class: int, test_per_class: int,
                   val_ratio: float = 0.05) -> dict:
    """[data] values of the learnable synthetic set under `root` (written and cached on first use, reused after)."""
    return {"source": "synthetic", "root": str(root), "image_size": image_size, "synth_classes": classes,
            "synth_per_class": per_class, "synth_val_per_class": test_per_class, "val_ratio": val_ratio}


def merge(*layers: dict[str, dict]) -> dict[str, dict]:
    """Sections of values, later layers winning key by key ({"train": {...}, "model": {...}, ...})."""
    merged: dict[str, dict] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


def bench_config(sections: dict[str, dict], device: str):
    """A checked Config (fasttrain.config.from_dict + validate, no TOML text in between): quiet logging and a single
    kept checkpoint on `device`, then `sections` on top."""
    from fasttrain.config import from_dict, validate

    quiet = {"train": {"device": device}, "log": {"tensorboard": False, "progress": False},
             "ckpt": {"every_epochs": 0, "keep": 1}}
    cfg = from_dict(merge(quiet, sections), "kernels_bench")
    validate(cfg, "kernels_bench")
    return cfg


def build_trainer(sections: dict[str, dict], run_dir: Path, device: str):
    """The Trainer exactly as `python -m fasttrain` builds it (single process), not yet fitted."""
    from fasttrain.engine.launch import open_dataset
    from fasttrain.engine.distributed import DistInfo
    from fasttrain.engine.trainer import Trainer

    cfg = bench_config(sections, device)
    info = DistInfo(0, 1, 0, torch.device(device))
    cache = open_dataset(cfg.data, info)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, cfg_name=run_dir.name, run_dir=run_dir, info=info, cache=cache,
                   log=lambda message: print(f"  [{run_dir.name}] {message}", file=sys.stderr))


def train_for_steps(sections: dict[str, dict], run_dir: Path, device: str):
    """Build the Trainer, fit, return it (its `model` is the plain trained module, its `eval_pipes` the eval pipelines)."""
    trainer = build_trainer(sections, run_dir, device)
    trainer.results = trainer.fit()
    return trainer


@dataclass(frozen=True)
class StepSettings:
    """The speed knobs of a step; the study's way is all of them off."""

    channels_last: bool = False
    amp: str = "off"
    """"off", "bf16" (forced) or "auto" (train.amp's default: what resolve_amp picks for the device; fp16
    would need a GradScaler, which the step suite does not measure, so auto's fp16 on old GPUs is not offered)."""
    compile: bool = False

    @property
    def label(self) -> str:
        parts = [name for name, on in (("channels_last", self.channels_last), ("amp", self.amp != "off"),
                                       ("compile", self.compile)) if on]
        return "+".join(parts) or "study"

    def resolved(self, device: torch.device) -> "StepSettings":
        """These settings with amp "auto" replaced by what the trainer would pick on `device`."""
        from fasttrain.engine.runtime import resolve_amp

        return replace(self, amp=resolve_amp(self.amp, device))


class SyntheticTrainStep:
    """Calling it runs one optimizer step of the real Trainer (its `train_step`) built from a Config:
    model → channels_last → torch.compile as the Trainer builds it, SGD (momentum 0.9, the trainer's default),
    constant lr, on a fixed random batch resident on the device."""

    def __init__(self, model_name: str, knobs: dict, settings: StepSettings, *, num_classes: int, batch_size: int,
                 image_size: int, device: torch.device, seed: int = 0):
        import itertools
        import tempfile

        per_class = max(2, -(-batch_size * 12 // (10 * num_classes)))  # the train split must hold one batch
        root = Path(tempfile.gettempdir()) / f"kernels_bench_step_{num_classes}c_{per_class}pc_{image_size}px"
        data = synthetic_data(root, image_size=image_size, classes=num_classes, per_class=per_class, test_per_class=1)
        sections = {"data": {**data, "backend": "torch"}, "model": {"name": model_name, **knobs},
                    "train": {"batch_size": batch_size, "epochs": 1, "seed": seed, "amp": settings.amp,
                              "channels_last": settings.channels_last},
                    "optim": {"lr": 0.01}, "sched": {"name": "constant"},
                    "compile": {"mode": "default" if settings.compile else "off"}}
        self._run_dir = tempfile.TemporaryDirectory(prefix="kernels_bench_step_")
        self.trainer = build_trainer(sections, Path(self._run_dir.name) / "run", str(device))
        self.trainer.train_module.train()
        self.model = self.trainer.model
        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device).contiguous(
            memory_format=memory_format)
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
        self.batch_size = batch_size
        self._batches = itertools.repeat((self.images, self.labels))

    def __call__(self) -> torch.Tensor:
        loss, _, _, _ = self.trainer.train_step(self._batches)
        return loss


def probe_step(case: dict) -> None:
    """One uncompiled step of a case (the crash guard's worker): the same kernels a compiled step calls for
    its convolutions, without minutes of compilation."""
    settings = StepSettings(channels_last=case["channels_last"], amp=case["amp"])
    step = SyntheticTrainStep(case["model"], case["knobs"], settings, num_classes=case["num_classes"],
                              batch_size=case["batch_size"], image_size=case["image_size"], device=torch.device("cpu"))
    step()


if __name__ == "__main__":  # the crash guard's child: python -m kernels_bench.core MODULE:FUNCTION < cases.json
    _crash_guard_child(sys.argv[1])
