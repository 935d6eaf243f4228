"""OUT_DIR/summary.json of the GPU check: one entry per stage (name, status, seconds, key figures), rewritten
after every stage, so a check cut off midway still says what finished.

`python3 -m kernels_bench.gpu_stages.summary start OUT_DIR DEVICE DRY_RUN STAGE...` lists every stage as
not_run; `python3 -m kernels_bench.gpu_stages.summary OUT_DIR STAGE EXIT_STATUS SECONDS BUDGET_S [REASON]`
records one stage; a stage killed by its budget (exit 124/137) gets OUT_DIR/STAGE.json saying so.
"""

from __future__ import annotations

import json
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from fasttrain.atomic import atomic_write_json

TIMED_OUT = (124, 137)


def _pytest_figures(out: Path) -> dict:
    xml = out / "pytest_gpu.xml"
    if not xml.exists():
        return {}
    suite = ElementTree.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _case_figures(record: dict, keys: tuple[str, ...], name_keys: tuple[str, ...]) -> dict:
    figures = {}
    for case in record.get("cases", []):
        name = "/".join(str(case.get(k)) for k in name_keys if case.get(k) is not None)
        figures[name] = ({"skipped": case["skipped"]} if "skipped" in case
                         else {k: case[k] for k in keys if case.get(k) is not None})
    return figures


def key_figures(stage: str, record: dict, out: Path) -> dict:
    """The few numbers of each stage a reader looks for first."""
    if stage == "pytest_gpu":
        return _pytest_figures(out)
    if stage == "sync_audit":
        trainer = record.get("trainer", {})
        return {"pipeline_syncs": record.get("pipeline_syncs"), "trainer_syncs": trainer.get("syncs"),
                "trainer_log_steps": trainer.get("log_steps"), "method": record.get("method")}
    if stage == "dali_lifetime":
        return {"equal": record.get("equal")}
    if stage == "loader":
        return {name: {k: b.get(k) for k in ("images_per_s", "ratio_vs_plain_dataloader", "pass_start_s")}
                for name, b in record.get("result", {}).get("backends", {}).items()}
    if stage == "e2e":
        figures = _case_figures(record, ("images_per_s", "compile_cold_s", "compile_warm_s"), ("path", "kind"))
        figures["e2e_vs_model_only"] = record.get("result", {}).get("e2e_vs_model_only")
        return figures
    if stage == "step":
        figures = _case_figures(record, ("images_per_s", "vs_study", "mfu", "mfu_datasheet", "compile_s"),
                                ("model", "variant"))
        figures["train_gflops_per_image"] = {c["model"]: c["train_gflops_per_image"] for c in record.get("cases", [])}
        return figures
    if stage == "t2t_attention":
        return {k: record.get(k) for k in ("default_4d_ms", "old_3d_ms", "speedup_4d_vs_3d", "fastest_forced_backend",
                                            "kernels_default_4d")}
    if stage == "forward_parity":
        return _case_figures(record, ("rel_err", "tolerance", "passed"), ("family",))
    return {}


def status_of(stage: str, exit_status: int, record: dict, out: Path) -> str:
    if exit_status in TIMED_OUT:
        return "timeout"
    if stage == "pytest_gpu":
        counts = _pytest_figures(out)
        if exit_status == 5 or (exit_status == 0 and counts and counts["skipped"] == counts["tests"]):
            return "skipped"  # no GPU: every gpu-marked test skipped itself
    if exit_status != 0:
        return "failed"
    return record.get("status", "ok") if record.get("status") in ("ok", "failed", "skipped") else "ok"


def record_stage(out: Path, stage: str, exit_status: int, seconds: float, budget_s: float, reason: str = "") -> dict:
    path = out / f"{stage}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if exit_status in TIMED_OUT:
        record = {**record, "stage": stage, "status": "timeout",
                  "reason": f"stopped by its {budget_s:.0f} s budget", "budget_s": budget_s}
        atomic_write_json(path, record)
    entry = {"name": stage, "status": status_of(stage, exit_status, record, out), "seconds": round(seconds, 1),
             "budget_s": budget_s, "exit_status": exit_status, "figures": key_figures(stage, record, out)}
    if reason or record.get("reason"):
        entry["reason"] = reason or record.get("reason")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"stages": []}
    names = [s["name"] for s in summary["stages"]]
    if stage in names:  # keep the check's order: replace the stage's placeholder
        summary["stages"][names.index(stage)] = entry
    else:
        summary["stages"].append(entry)
    summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summary["total_seconds"] = round(sum(s["seconds"] for s in summary["stages"]), 1)
    summary["all_ok"] = all(s["status"] in ("ok", "skipped") for s in summary["stages"])
    summary["counts"] = {status: sum(1 for s in summary["stages"] if s["status"] == status)
                         for status in ("ok", "failed", "skipped", "timeout", "not_run")}
    atomic_write_json(summary_path, summary)
    return entry


def start(out: Path, stages: list[str], device: str, dry_run: bool) -> None:
    """A summary with every stage "not_run", so a check killed as a whole still lists what never ran."""
    atomic_write_json(out / "summary.json", {
        "device": device, "dry_run": dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": [{"name": s, "status": "not_run", "seconds": 0.0, "figures": {}} for s in stages]})


if __name__ == "__main__":
    if sys.argv[1] == "start":  # start OUT_DIR DEVICE DRY_RUN STAGE...
        start(Path(sys.argv[2]), sys.argv[5:], sys.argv[3], sys.argv[4] == "1")
        raise SystemExit(0)
    out_dir, name, status, secs, budget = sys.argv[1:6]
    entry = record_stage(Path(out_dir), name, int(status), float(secs), float(budget), " ".join(sys.argv[6:]))
    print(f"stage {name}: {entry['status']} in {entry['seconds']} s", flush=True)
