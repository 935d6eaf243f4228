"""`python -m fasttrain.study SUITE`: check every run of a suite, then run them one by one (or print their commands)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fasttrain.rundir import RunDir
from fasttrain.errors import OneLineArgumentParser, UserError, run_cli

RUNS_FAILED_EXIT = 1


def parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m fasttrain.study",
                description="Run a study suite (configs/studies/*.toml): every run checked first, then run in order; "
                            "finished runs are skipped, interrupted ones resumed, failed ones reported at the end.")
    p.add_argument("suite", help="a suite file, or a name in configs/studies/ (seed, axes, recipes)")
    p.add_argument("--quick", action="store_true",
                   help="tiny models, few epochs, the synthetic data set: minutes on a CPU (default --out runs/SUITE-quick)")
    p.add_argument("--dry-run", action="store_true",
                   help="print each run's exact command instead of running it (and write OUT/suite.json for the report)")
    p.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these runs of the suite")
    p.add_argument("--seeds", nargs="+", type=int, default=[], metavar="SEED",
                   help="repeat every run (or the --only runs) once per seed, each in its own directory NAME/seedN; "
                        "replaces the suite's `seeds`")
    p.add_argument("--out", help="suite directory: one run directory per run (default runs/SUITE, runs/SUITE-quick)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="processes (GPUs) per run; above 1 each run is launched with torchrun --nproc_per_node=N")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override applied to every run, after the suite's own (repeatable)")
    p.add_argument("--no-report", action="store_true", help="do not write OUT/report/REPORT.md at the end")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return p


def _dry_run(planned, selected, out_dir: Path, nproc: int) -> None:
    from fasttrain.study.plan import train_command
    from fasttrain.study.runner import is_finished
    from fasttrain.suite_manifest import shell_line

    print(f"# run from {Path.cwd()} (config and run paths below are relative to it)")
    for run in planned:
        if run.name not in selected:
            continue
        state = "finished (the command prints 'nothing to do')" if is_finished(run.run_dir) else \
            "incomplete (the command resumes it)" if RunDir(run.run_dir).checkpoints.is_dir() else "not started"
        print(f"# {run.key}: {state}")
        print(shell_line(train_command(run, nproc=nproc)))
    print(f"# then: python -m fasttrain.report --suite {out_dir}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from fasttrain.study.plan import check_selection, check_world_size, display_path, plan_suite, train_command
    from fasttrain.study.runner import FAILED, run_all
    from fasttrain.study.suite import check_seeds, find_suite, load_suite
    from fasttrain.suite_manifest import build_manifest, previous_attempts, write_manifest

    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    suite = load_suite(find_suite(args.suite))
    out_dir = Path(args.out) if args.out else Path("runs") / (suite.name + ("-quick" if args.quick else ""))
    selected = check_selection(suite, tuple(args.only))
    seeds = check_seeds(tuple(args.seeds), "--seeds")
    planned = plan_suite(suite, out_dir=out_dir, quick=args.quick, extra_overrides=tuple(args.set), seeds=seeds)
    check_world_size(suite, planned, args.nproc)
    commands = {run.key: train_command(run, nproc=args.nproc) for run in planned}
    manifest = build_manifest(suite, planned, quick=args.quick, commands=commands, attempts=previous_attempts(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(out_dir, manifest)
    if args.dry_run:
        _dry_run(planned, selected, out_dir, args.nproc)
        return 0

    runs_chosen = sum(run.name in selected for run in planned)
    print(f"study {suite.name}{' (quick)' if args.quick else ''}: {runs_chosen} of {len(planned)} runs "
          f"into {display_path(out_dir)}", flush=True)
    outcomes = run_all(planned, selected=selected, out_dir=out_dir, nproc=args.nproc, manifest=manifest)
    failed = [o for o in outcomes if o.status == FAILED]
    print("summary: " + ", ".join(f"{o.name} {o.status}" for o in outcomes), flush=True)
    if not args.no_report:
        from fasttrain.report.render import render_suite

        report = render_suite(out_dir, out_dir / "report")
        print(f"report: {display_path(report)}", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed: " + "; ".join(f"{o.name} (exit {o.exit_code}): {o.error}" for o in failed),
              file=sys.stderr, flush=True)
        return RUNS_FAILED_EXIT
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
