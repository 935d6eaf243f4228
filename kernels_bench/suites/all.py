"""Every suite in one process, one after another: one combined JSON (a report per suite) and one markdown page.

A suite that fails is recorded with its error and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import traceback

from kernels_bench.__main__ import suite_module

ORDER = ("prepare", "loader", "kernels", "step", "e2e", "parity")
# the smallest arguments that still run every code path (for tests); --smoke adds these
SMOKE_ARGS = {
    "prepare": ["--images", "200", "--size", "32"],
    "loader": ["--batch-size", "16", "--image-size", "32"],
    "step": ["--models", "resnet18", "--variants", "study,channels_last,amp", "--compile-models", ""],
    "parity": ["--families", "resnet,t2t"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suites", default=",".join(ORDER), help=f"comma-separated subset of {','.join(ORDER)}, run in that order")


def _suite_argv(name: str, args: argparse.Namespace) -> list[str]:
    module = suite_module(name)
    cpu_only = tuple(getattr(module, "DEVICES", ("cpu", "cuda"))) == ("cpu",)
    argv = [name, "--device", "auto" if cpu_only else args.device]
    if args.smoke:
        argv += ["--smoke", *SMOKE_ARGS.get(name, [])]
    elif args.quick:
        argv.append("--quick")
    return argv


def run(args: argparse.Namespace) -> dict:
    from fasttrain.errors import UserError
    from kernels_bench.__main__ import run_suite

    names = [n.strip() for n in args.suites.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown or not names:
        raise UserError(f"unknown suite(s) in --suites: {', '.join(unknown) or '(none)'}; choose from {', '.join(ORDER)}")
    reports, failed = [], []
    for name in names:
        argv = _suite_argv(name, args)
        print(f"== kernels_bench {' '.join(argv)}", flush=True)
        try:
            report, _, _ = run_suite(argv)
        except Exception as err:  # one broken suite must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            report = {"suite": name, "argv": argv, "error": f"{type(err).__name__}: {err}"}
        if report.get("failed"):  # a suite that ran but judged a case failed (parity) fails the run too
            failed.append(name)
        reports.append(report)
    return {"suites": reports, "failed": failed}


def to_markdown(report: dict) -> str:
    from kernels_bench.__main__ import render_markdown

    env, versions = report["environment"], report["versions"]
    lines = [f"## kernels_bench all ({report['device']}{', quick' if report['quick'] else ''}{', smoke' if report['smoke'] else ''})",
             "", f"- started {report['started']}, {report['seconds']} s; {env['cpu_cores']} CPU cores, load average "
             f"{env['load_average_1m_at_start']} at start, {env['load_average_1m_at_end']} at end",
             f"- torch {versions['torch']}, torchvision {versions['torchvision']}, DALI {versions['dali']}, CUDA {versions['cuda']}"
             + (f", GPU {versions['gpu']}" if versions.get("gpu") else ""), ""]
    for suite_report in report["suites"]:
        if "error" in suite_report:
            lines += [f"### {suite_report['suite']}: FAILED", "", f"`{suite_report['error']}`", ""]
            continue
        module = suite_module(suite_report["suite"])
        lines += [render_markdown(suite_report, module), f"({suite_report['seconds']} s)", ""]
    return "\n".join(lines) + "\n"
