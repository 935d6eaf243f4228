"""Preflight, in seconds: what this machine has for the check (versions of torch, triton, DALI, timm…; GPU, driver).

Also where `fasttrain` and `nvidia.dali` were imported from (a copy of the working tree on PYTHONPATH, the carried
DALI under /tmp), the Inductor cache (cold or warm), the CUDA determinism setting, free disk and cores. A package the
check needs that is missing is listed; with --require-dali a missing DALI fails the run (a GPU check whose plan
carried DALI must not pass without it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile

import torch

from kernels_bench.core import dali_importable, emit, environment, gpu_driver, inductor_cache_state

# what the check imports: the box's own packages (no install step runs there)
PACKAGES = ("torch", "torchvision", "triton", "timm", "numpy", "cv2", "tensorboard", "matplotlib", "onnx", "pytest",
            "xdist", "pytest_timeout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--require-dali", action="store_true", help="fail when nvidia.dali is not importable")


def _package(name: str) -> dict:
    try:
        module = importlib.import_module(name)
    except Exception as err:
        return {"version": None, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"}
    return {"version": getattr(module, "__version__", "unknown"), "from": os.path.dirname(getattr(module, "__file__", "") or "")}


def _dali() -> dict:
    if not dali_importable():
        return {"version": None, "error": "nvidia.dali is not importable (or its operators are not)"}
    import nvidia.dali

    return {"version": nvidia.dali.__version__, "from": os.path.dirname(nvidia.dali.__file__)}


def run(args: argparse.Namespace) -> dict:
    import fasttrain

    packages = {name: _package(name) for name in PACKAGES}
    packages["nvidia.dali"] = _dali()
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": torch.cuda.get_device_name(0), "driver": gpu_driver(), "memory_gib": round(props.total_memory / 2**30, 1),
               "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
               "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "count": torch.cuda.device_count()}
    tmp = shutil.disk_usage(tempfile.gettempdir())
    missing = sorted(name for name, found in packages.items() if found["version"] is None)
    dali_missing = packages["nvidia.dali"]["version"] is None
    result = {
        "python": sys.version.split()[0], "executable": sys.executable, "packages": packages, "missing": missing,
        "gpu": gpu, "cpu_cores": environment()["cpu_cores"],
        "fasttrain_from": os.path.dirname(fasttrain.__file__), "pythonpath": os.environ.get("PYTHONPATH", ""),
        "inductor_cache": inductor_cache_state(), "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "tmp_free_gib": round(tmp.free / 2**30, 1),
        "failed": ["nvidia.dali"] if dali_missing and args.require_dali else [],
    }
    emit("preflight", {k: result[k] for k in ("missing", "gpu", "fasttrain_from", "failed")})
    print("preflight: " + ", ".join(f"{name} {found['version']}" for name, found in packages.items())
          + (f"; GPU {gpu['name']}, driver {gpu['driver']}" if gpu else "; no CUDA GPU"), flush=True)
    if result["failed"]:
        print("preflight: FAILED: nvidia.dali is not importable and this run requires it", flush=True)
    return result
