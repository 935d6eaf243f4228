"""The GPU check's summary.json: every stage of a call (status, seconds, budget, key figures), rewritten after each.

Statuses: ok, failed, timeout (stopped by its budget), skipped, not_run. `all_ok` is true only when every stage is
ok: on a GPU run a skipped stage is a failure of the check (a GPU that skipped the DALI stages has not checked the
fast recipes' backend), and a call whose plan needs DALI fails when DALI was not importable, whatever the stages
said. Only a dry run (CPU) accepts skipped stages, for what needs a CUDA GPU.

CLI (used by gpu_check.sh):
  python3 -m kernels_bench.check_summary start OUT WORK --device D --call C [--dry-run] [--dali-required] STAGE...
  python3 -m kernels_bench.check_summary record OUT WORK STAGE EXIT_STATUS SECONDS BUDGET [REASON...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from xml.etree import ElementTree

from fasttrain.atomic import atomic_write_json

TIMED_OUT = (124, 137)
STATUSES = ("ok", "failed", "skipped", "timeout", "not_run")


def _pytest_counts(work: Path, stage: str) -> dict:
    xml = work / f"{stage}.xml"
    if not xml.exists():
        return {}
    suite = ElementTree.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _per_case(cases: list[dict], keys: tuple[str, ...], name_keys: tuple[str, ...]) -> dict:
    figures = {}
    for case in cases:
        name = "/".join(str(case.get(k)) for k in name_keys if case.get(k) is not None)
        figures[name] = ({"skipped": case["skipped"]} if "skipped" in case
                         else {k: case[k] for k in keys if case.get(k) is not None})
    return figures


def key_figures(stage: str, record: dict, work: Path) -> dict:
    """The few numbers of each stage a reader looks for first."""
    result, cases = record.get("result", {}), record.get("cases", [])
    suite = record.get("suite", stage)
    if stage.startswith("pytest"):
        return _pytest_counts(work, stage)
    if stage == "dali_parts":
        return {k: record.get(k) for k in ("parts_present", "parts_total", "installed", "importable", "dali_version")}
    if suite == "preflight":
        packages = result.get("packages", {})
        return {"versions": {name: packages.get(name, {}).get("version") for name in ("torch", "triton", "timm", "nvidia.dali")},
                "gpu": (result.get("gpu") or {}).get("name"), "driver": (result.get("gpu") or {}).get("driver"),
                "missing": result.get("missing"), "inductor_cache_files": result.get("inductor_cache", {}).get("files")}
    if suite == "step":
        return _per_case(cases, ("images_per_s", "vs_study", "mfu", "mfu_datasheet", "compile_s", "compile_warm_s"),
                         ("model", "variant"))
    if suite == "e2e":
        figures = _per_case(cases, ("images_per_s", "compile_cold_s", "compile_warm_s"), ("path", "kind", "backend"))
        figures["e2e_vs_model_only_by_backend"] = result.get("e2e_vs_model_only_by_backend")
        return figures
    if suite == "loader":
        return {name: {k: b.get(k) for k in ("images_per_s", "ratio_vs_plain_dataloader", "pass_start_s")}
                for name, b in result.get("backends", {}).items()}
    if suite == "sync_audit":
        trainer = result.get("trainer", {})
        return {"pipeline_syncs": result.get("pipeline_syncs"), "host_blocked_ms_per_batch": result.get("host_blocked_ms_per_batch"),
                "trainer_syncs": trainer.get("syncs"), "trainer_log_steps": trainer.get("log_steps")}
    if suite == "dali_reuse":
        return {"control_detected": result.get("control", {}).get("detected"),
                "dali": result.get("dali", {}).get("status") or result.get("dali", {}).get("passed")}
    if suite == "t2t_attention":
        return _per_case(cases, ("default_ms", "fastest_forced_backend", "calls_per_forward"), ("q",))
    if suite == "ddp_buckets":
        return _per_case(cases, ("step_ms", "peak_mem_mb", "vs_default"), ("gradient_as_bucket_view", "bucket_cap_mb"))
    if suite == "parity":
        return _per_case(cases, ("rel_err", "tolerance", "passed"), ("family",))
    return {}


def status_of(stage: str, exit_status: int, record: dict, work: Path) -> str:
    if exit_status in TIMED_OUT:
        return "timeout"
    if stage.startswith("pytest"):
        counts = _pytest_counts(work, stage)
        if exit_status == 5 or (exit_status == 0 and counts and counts["skipped"] == counts["tests"]):
            return "skipped"  # no test ran: on a CPU, every gpu-marked test skipped itself
    if exit_status != 0 or record.get("failed"):
        return "failed"
    return "ok"


def _passes(entry: dict, dry_run: bool) -> bool:
    return entry["status"] == "ok" or (dry_run and entry["status"] == "skipped")


def _dali_importable(work: Path) -> bool | None:
    """What this call's preflight found (None: no preflight record)."""
    path = work / "preflight.json"
    if not path.exists():
        return None
    packages = json.loads(path.read_text()).get("result", {}).get("packages", {})
    return packages.get("nvidia.dali", {}).get("version") is not None


def finish(summary: dict, work: Path) -> dict:
    """Totals, counts and the verdict of a summary, from its stages."""
    stages = summary["stages"]
    summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summary["total_seconds"] = round(sum(s["seconds"] for s in stages), 1)
    summary["counts"] = {status: sum(1 for s in stages if s["status"] == status) for status in STATUSES}
    problems = [f"{s['name']}: {s['status']}" for s in stages if not _passes(s, summary["dry_run"])]
    if summary.get("dali_required") and _dali_importable(work) is False:
        problems.append("nvidia.dali was not importable in a call whose plan needs it")
    summary["problems"] = problems
    summary["all_ok"] = not problems
    return summary


def record_stage(out: Path, work: Path, stage: str, exit_status: int, seconds: float, budget_s: float,
                 reason: str = "") -> dict:
    """Write one finished stage into OUT/summary.json (its full record stays in WORK/<stage>.json)."""
    path = work / f"{stage}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    entry = {"name": stage, "status": status_of(stage, exit_status, record, work), "seconds": round(seconds, 1),
             "budget_s": budget_s, "exit_status": exit_status, "figures": key_figures(stage, record, work)}
    if exit_status in TIMED_OUT:
        entry["reason"] = f"stopped by its {budget_s:.0f} s budget (SIGINT; the log says where it was)"
    if record.get("failed"):
        entry["failed_cases"] = record["failed"]
    if reason:
        entry["reason"] = reason
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())
    names = [s["name"] for s in summary["stages"]]
    if stage in names:  # keep the plan's order: replace the stage's placeholder
        summary["stages"][names.index(stage)] = entry
    else:
        summary["stages"].append(entry)
    atomic_write_json(summary_path, finish(summary, work))
    return entry


def start(out: Path, work: Path, stages: list[str], *, device: str, dry_run: bool, call: str,
          dali_required: bool) -> None:
    """A summary with every stage "not_run", so a call killed as a whole still lists what never ran."""
    summary = {"device": device, "dry_run": dry_run, "call": call, "dali_required": dali_required,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "stages": [{"name": s, "status": "not_run", "seconds": 0.0, "figures": {}} for s in stages]}
    atomic_write_json(out / "summary.json", finish(summary, work))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m kernels_bench.check_summary")
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start")
    begin.add_argument("out", type=Path)
    begin.add_argument("work", type=Path)
    begin.add_argument("--device", required=True)
    begin.add_argument("--call", required=True)
    begin.add_argument("--dry-run", action="store_true")
    begin.add_argument("--dali-required", action="store_true")
    begin.add_argument("stages", nargs="+")
    done = commands.add_parser("record")
    done.add_argument("out", type=Path)
    done.add_argument("work", type=Path)
    done.add_argument("stage")
    done.add_argument("exit_status", type=int)
    done.add_argument("seconds", type=float)
    done.add_argument("budget", type=float)
    done.add_argument("reason", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "start":
        start(args.out, args.work, args.stages, device=args.device, dry_run=args.dry_run, call=args.call,
              dali_required=args.dali_required)
        return 0
    entry = record_stage(args.out, args.work, args.stage, args.exit_status, args.seconds, args.budget, " ".join(args.reason))
    print(f"stage {args.stage}: {entry['status']} in {entry['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
