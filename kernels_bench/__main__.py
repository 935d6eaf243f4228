"""Suite dispatcher: `python -m kernels_bench SUITE [--device cpu|cuda] [--quick] [--json PATH] [--md PATH]`."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path

import kernels_bench
from fasttrain.atomic import atomic_write_json, atomic_write_text
from fasttrain.errors import OneLineArgumentParser, UserError, run_cli


def available_suites() -> list[str]:
    """Every module of the kernels_bench package that is a suite (public name, not __main__; the
    `measure` subpackage holds shared helpers, not suites)."""
    return sorted(m.name for m in pkgutil.iter_modules(kernels_bench.__path__) if not m.name.startswith("_") and not m.ispkg)


def _base_parser(suites: list[str]) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m kernels_bench", description="Run one benchmark suite.")
    parser.add_argument("suite", help=f"one of: {', '.join(suites)}")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run (default: cuda when available, else cpu)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (reduced widths and batches on CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest run that exercises every code path, in seconds (for tests; figures mean nothing)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument("--md", type=Path, default=None, help="also write the result as a markdown table here")
    return parser


def _resolve_device(requested: str, supported: tuple[str, ...]) -> str:
    """The device a suite runs on; torch is imported only when a suite can use a GPU."""
    if supported == ("cpu",):
        if requested == "cuda":
            raise UserError("this suite runs on the CPU only; drop --device cuda")
        return "cpu"
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    return "cpu"


def _environment() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_cores": cores,
            "processor": platform.processor() or platform.machine(),
            # other work on the machine skews throughput figures; record how busy it was
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
            # on a shared CPU, spinning OpenMP threads (the default) can slow a step tenfold; record the policy
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def generic_markdown(result: dict) -> str:
    """A two-column table of every scalar in the result (nested keys joined with '.')."""
    rows = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif not isinstance(value, list):
            rows.append(f"| {prefix} | {value} |")

    walk("", result)
    return "\n".join(["| figure | value |", "|---|---|", *rows]) + "\n"


def run_suite(argv: list[str]) -> tuple[dict, argparse.Namespace, object]:
    """Parse `argv` (suite name first), run the suite, return (report, parsed args, suite module).

    The report holds `suite`, `device`, `versions`, `environment` and the figures: a suite that
    returns `cases` (one object per measured case) has its keys merged into the report; any other
    suite's figures sit under `result`.
    """
    suites = available_suites()
    parser = _base_parser(suites)
    known, _ = parser.parse_known_args(argv)
    if known.suite not in suites:
        raise UserError(f"unknown benchmark suite {known.suite!r}; available: {', '.join(suites)}")
    suite = importlib.import_module(f"kernels_bench.{known.suite}")
    if hasattr(suite, "add_arguments"):
        suite.add_arguments(parser)
    args = parser.parse_args(argv)
    args.quick = args.quick or args.smoke
    # a suite may declare DEVICES = ("cpu",) when it never touches a GPU
    args.device = _resolve_device(args.device, tuple(getattr(suite, "DEVICES", ("cpu", "cuda"))))

    from kernels_bench.measure.versions import software_versions

    started = time.time()
    environment = _environment()
    figures = suite.run(args)
    report = {"suite": args.suite, "device": args.device, "quick": args.quick, "smoke": args.smoke,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
              "seconds": round(time.time() - started, 2), "versions": software_versions(args.device),
              "environment": {**environment, "load_average_1m_at_end": round(os.getloadavg()[0], 2)}}
    if "cases" in figures or "suites" in figures:
        report.update(figures)
    else:
        report["result"] = figures
    return report, args, suite


def render_markdown(report: dict, suite) -> str:
    render = getattr(suite, "to_markdown", None)
    return render(report) if render else generic_markdown(report)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    report, args, suite = run_suite(argv)
    print(json.dumps(report, indent=2))
    if args.json:
        atomic_write_json(args.json, report)
    if args.md:
        atomic_write_text(args.md, render_markdown(report, suite))
    # `all` keeps going past a failed suite so the others still report; the exit status says it failed
    return 1 if report.get("failed") else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
