"""The GPU check script, proven on a CPU: its dry run writes every stage's record and one summary; budgets end stages as timeouts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels_bench.gpu_stages.summary import record_stage, start

REPO = Path(__file__).resolve().parents[1]
STAGES = ["pytest_gpu", "sync_audit", "dali_lifetime", "loader", "e2e", "step", "t2t_attention", "forward_parity"]


@pytest.mark.slow  # about a minute on 2 busy cores
def test_dry_run_writes_every_stage_and_the_summary(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(["bash", str(REPO / "kernels_bench" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["device"] == "cpu"
    assert [s["name"] for s in summary["stages"]] == STAGES
    for stage in summary["stages"]:
        assert stage["status"] in ("ok", "skipped"), stage
        assert (tmp_path / f"{stage['name']}.json").exists() or stage["name"] == "pytest_gpu"
        assert stage["seconds"] > 0
    assert summary["total_seconds"] < 120
    by_name = {s["name"]: s for s in summary["stages"]}
    assert by_name["sync_audit"]["figures"]["pipeline_syncs"]["torch"] == 0  # no host reads in the torch backend
    assert all(f["passed"] for f in by_name["forward_parity"]["figures"].values())
    assert "skipped" in by_name["step"]["figures"]["resnet50/fast"]  # no CPU compile in a dry run, and it says so


def test_stage_stopped_by_its_budget_is_recorded_as_timeout_and_the_rest_stay_listed(tmp_path):
    start(tmp_path, STAGES, "cuda", False)
    stopped = subprocess.run(["timeout", "1", sys.executable, "-c", "import time; time.sleep(30)"])
    entry = record_stage(tmp_path, "sync_audit", stopped.returncode, 1.0, 1)
    assert stopped.returncode == 124 and entry["status"] == "timeout"
    assert json.loads((tmp_path / "sync_audit.json").read_text())["status"] == "timeout"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == STAGES
    assert summary["counts"] == {"ok": 0, "failed": 0, "skipped": 0, "timeout": 1, "not_run": 7}
    assert summary["all_ok"] is False


def test_stage_status_from_its_exit_and_record(tmp_path):
    start(tmp_path, STAGES, "cuda", False)
    (tmp_path / "dali_lifetime.json").write_text(json.dumps({"status": "failed", "equal": [True, False]}))
    assert record_stage(tmp_path, "dali_lifetime", 1, 2.0, 25)["status"] == "failed"
    (tmp_path / "t2t_attention.json").write_text(json.dumps({"status": "skipped", "reason": "no CUDA GPU"}))
    entry = record_stage(tmp_path, "t2t_attention", 0, 2.0, 20)
    assert entry["status"] == "skipped" and entry["reason"] == "no CUDA GPU"


def test_gpu_check_uses_python3_and_is_valid_bash():
    script = (REPO / "kernels_bench" / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "kernels_bench" / "gpu_check.sh")]).returncode == 0
    assert "python -m" not in script and "python3 -m kernels_bench" in script
