"""Suite dispatcher: `python -m kernels_bench SUITE [--device auto|cpu|cuda] [--quick|--smoke] [--json P] [--md P] [--cases P]`."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import signal
import sys
import time
import traceback
from pathlib import Path

from fasttrain.atomic import atomic_write_json, atomic_write_text
from fasttrain.errors import OneLineArgumentParser, UserError, run_cli
from kernels_bench import core, suites as suites_package

INTERRUPTED = 130  # what a shell reports for a process ended by SIGINT


def available_suites() -> list[str]:
    """Every module of kernels_bench/suites/ (public names)."""
    return sorted(m.name for m in pkgutil.iter_modules(suites_package.__path__) if not m.name.startswith("_"))


def suite_module(name: str):
    return importlib.import_module(f"kernels_bench.suites.{name}")


def _base_parser(suites: list[str], *, add_help: bool) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m kernels_bench", description="Run one benchmark suite.",
                                   add_help=add_help)
    parser.add_argument("suite", help=f"one of: {', '.join(suites)}")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run (default: cuda when available, else cpu)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (reduced widths and batches on CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest run that exercises every code path, in seconds (for tests; figures mean nothing)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument("--md", type=Path, default=None, help="also write the result as a markdown table here")
    parser.add_argument("--cases", type=Path, default=None,
                        help=f"append each case to this JSON-lines file the moment it finishes (also ${core.CASES_ENV})")
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


def parse(argv: list[str]) -> tuple[argparse.Namespace, object]:
    """(parsed arguments, suite module): the suite's own options join the common ones, `--help` included."""
    suites = available_suites()
    if not argv or argv[0] in ("-h", "--help"):
        _base_parser(suites, add_help=True).parse_args(argv)  # prints the help and exits, or names what is missing
    known, _ = _base_parser(suites, add_help=False).parse_known_args(argv)
    if known.suite not in suites:
        raise UserError(f"unknown benchmark suite {known.suite!r}; available: {', '.join(suites)}")
    suite = suite_module(known.suite)
    parser = _base_parser(suites, add_help=True)
    parser.description = (suite.__doc__ or "").strip().splitlines()[0] if suite.__doc__ else parser.description
    if hasattr(suite, "add_arguments"):
        suite.add_arguments(parser)
    args = parser.parse_args(argv)
    args.quick = args.quick or args.smoke
    # a suite may declare DEVICES = ("cpu",) when it never touches a GPU
    args.device = _resolve_device(args.device, tuple(getattr(suite, "DEVICES", ("cpu", "cuda"))))
    if args.cases:
        os.environ[core.CASES_ENV] = str(args.cases.resolve())
    return args, suite


def run_suite(argv: list[str]) -> tuple[dict, argparse.Namespace, object]:
    """Parse `argv` (suite name first), run the suite, return (report, parsed args, suite module).

    The report holds `suite`, `device`, `versions`, `environment` and the figures: a suite that
    returns `cases` (one object per measured case) has its keys merged into the report; any other
    suite's figures sit under `result`.
    """
    args, suite = parse(argv)
    started = time.time()
    environment = core.environment()
    figures = suite.run(args)
    report = {"suite": args.suite, "device": args.device, "quick": args.quick, "smoke": args.smoke,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
              "seconds": round(time.time() - started, 2), "versions": core.software_versions(args.device),
              "environment": {**environment, "load_average_1m_at_end": core.load_average()}}
    if "cases" in figures or "suites" in figures:
        report.update(figures)
    else:
        report["result"] = figures
        if figures.get("failed"):  # what a suite judged failed decides the exit status wherever its figures sit
            report["failed"] = figures["failed"]
    return report, args, suite


def render_markdown(report: dict, suite) -> str:
    render = getattr(suite, "to_markdown", None)
    return render(report) if render else generic_markdown(report)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # a shell that starts a job in the background makes it ignore SIGINT; a budget's `timeout --signal=INT` must reach us
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        report, args, suite = run_suite(argv)
    except KeyboardInterrupt:
        # `timeout --signal=INT` ends a suite that ran past its budget: say where it was (the cases that finished
        # are already in the --cases file), then exit as a process ended by SIGINT
        print(f"kernels_bench {' '.join(argv[:1])}: interrupted at: {core.position()}", file=sys.stderr, flush=True)
        traceback.print_exc(limit=-8)
        return INTERRUPTED
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        atomic_write_json(args.json, report)
    if args.md:
        atomic_write_text(args.md, render_markdown(report, suite))
    # a suite that judged a case failed (parity, dali_reuse, preflight's required packages) fails the run
    return 1 if report.get("failed") else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
