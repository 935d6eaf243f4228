"""`python -m fasttrain.report RUN_DIR... | --suite runs/SUITE [--out DIR]`: write REPORT.md and its plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fasttrain.errors import OneLineArgumentParser, UserError, run_cli


def parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m fasttrain.report",
                description="A markdown table of runs (next to the study's numbers) and per-comparison PNG plots, "
                            "read from run directories (results.json, metrics.jsonl).")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories written by python -m fasttrain")
    p.add_argument("--suite", metavar="DIR", help="a study directory written by python -m fasttrain.study (e.g. runs/seed)")
    p.add_argument("--out", help="where REPORT.md and the PNGs go (default: DIR/report with --suite, else report/)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.suite) == bool(args.run_dirs):
        raise UserError("pass either run directories or --suite DIR (see python -m fasttrain.report --help)")
    from fasttrain.report.render import render_runs, render_suite

    if args.suite:
        path = render_suite(Path(args.suite), Path(args.out) if args.out else Path(args.suite) / "report")
    else:
        path = render_runs([Path(d) for d in args.run_dirs], Path(args.out or "report"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
