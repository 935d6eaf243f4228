"""The GPU check, proven on a CPU: a rehearsal of the GPU machine (a copy of the working tree, PYTHONPATH only, no
registry, <= 8 files back), DALI's wheel carried in parts, the summary's verdict, budgets that stop a stage and say where."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from kernels_bench import check_summary, dali_wheel
from kernels_bench.__main__ import run_suite

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "kernels_bench" / "gpu_check.sh"
ALL_STAGES = ["dali_parts", "preflight", "step_resnet50", "t2t_attention", "step_resnext50", "forward_parity", "pytest",
              "ddp_buckets", "loader", "e2e", "sync_audit", "dali_reuse"]
# what the GPU machine sends back: at most 8 files, at most 2 folders down, named in letters, digits, '.', '_', '-'
BACK_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def tiny_wheel(folder: Path, name: str = "fasttrain_rehearsal_pkg", version: str = "1.0") -> Path:
    """A real, installable pure-Python wheel of one module (what the DALI wheel is to pip, in 1 KB)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f'__version__ = "{version}"\n',
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={hashlib.sha256(text.encode()).hexdigest()},{len(text.encode())}\n"
                     for path, text in files.items()) + f"{dist}/RECORD,,\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in {**files, f"{dist}/RECORD": record}.items():
            archive.writestr(path, text)
    return wheel


def working_tree_copy(dest: Path) -> Path:
    """What travels to the GPU machine: tracked and untracked-not-ignored files, nothing installed."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(source.read_bytes())
    return dest


@pytest.mark.slow  # about two minutes on 2 busy cores
def test_rehearsal_of_the_gpu_machine_from_a_copy_without_install_or_registry(tmp_path):
    copy = working_tree_copy(tmp_path / "tree")
    parts = tmp_path / "carried"
    manifest = dali_wheel.split(tiny_wheel(tmp_path), [], parts, part_mib=0.0005)  # a ~1 KB wheel in parts of 524 bytes
    assert len(manifest["parts"]) >= 2
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERNELS_BENCH_CASES")}
    env.update(PIP_NO_INDEX="1", DALI_CARRIED=str(parts), DALI_IMPORT_NAME="fasttrain_rehearsal_pkg",
               TMPDIR=str(tmp_path))
    result = subprocess.run(["bash", str(copy / "kernels_bench" / "gpu_check.sh"), "--dry-run", str(out)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    returned = [p for p in out.rglob("*") if p.is_file()]
    assert len(returned) <= 8 and all(BACK_NAME.match(p.name) for p in returned)
    assert all(len(p.relative_to(out).parts) <= 3 for p in returned)
    assert {p.name for p in returned} == {"summary.json", "cases.jsonl", "check.log", "results-callall.tar.gz"}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["device"] == "cpu" and summary["all_ok"] is True
    assert [s["name"] for s in summary["stages"]] == ALL_STAGES
    by_name = {s["name"]: s for s in summary["stages"]}
    assert all(s["status"] == "ok" for n, s in by_name.items() if n != "pytest")
    assert by_name["pytest"]["status"] == "skipped"  # the gpu-marked tests, on a CPU
    count = len(manifest["parts"])
    assert by_name["dali_parts"]["figures"] == {"parts_present": count, "parts_total": count, "installed": True,
                                                "importable": True, "dali_version": "1.0"}
    assert by_name["sync_audit"]["figures"]["pipeline_syncs"]["torch"] == 0
    assert by_name["dali_reuse"]["figures"]["control_detected"] is True
    assert all(f["passed"] for f in by_name["forward_parity"]["figures"].values())
    assert "skipped" in by_name["step_resnet50"]["figures"]["resnet50/fast"]  # no CPU compile in a dry run, and it says so

    with tarfile.open(out / "results-callall.tar.gz") as archive:
        names = {Path(n).name for n in archive.getnames()}
    assert {f"{stage}.json" for stage in ALL_STAGES if stage != "pytest"} <= names and "pytest.xml" in names
    with tarfile.open(out / "results-callall.tar.gz") as archive:
        preflight = json.load(archive.extractfile(next(m for m in archive.getmembers() if m.name.endswith("preflight.json"))))
    assert preflight["result"]["fasttrain_from"] == str(copy / "fasttrain")  # the copy's code, not an installed package
    suites = {json.loads(line)["suite"] for line in (out / "cases.jsonl").read_text().splitlines()}
    assert {"step", "loader", "e2e", "sync_audit", "dali_reuse", "t2t_attention", "ddp_buckets"} <= suites


def test_wheel_parts_reassemble_to_the_same_sha256_and_install_without_a_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    wheel = tiny_wheel(tmp_path)
    dummy = tmp_path / "dummy.whl"
    dummy.write_bytes(os.urandom(300_000) + wheel.read_bytes())
    carried = tmp_path / "carried"
    manifest = dali_wheel.split(dummy, [wheel], carried, part_mib=0.1)  # 300 KB in parts of 100 KiB
    assert len(manifest["parts"]) == 3 and all(p["size"] <= 0.1 * 2**20 for p in manifest["parts"])
    store = tmp_path / "store"
    # each call carries one part: nothing is installed until the last has arrived, and the store keeps what came
    for k in (1, 2, 3):  # the call's tree holds .dali_wheel/partK alone: the carried folder replaces the last one
        call = tmp_path / f"call{k}"
        shutil.copytree(carried / f"part{k}", call / f"part{k}")
        if k < 3:
            record = dali_wheel.install(call, store, import_name="fasttrain_rehearsal_pkg")
            assert record["parts_present"] == k and record["installed"] is False
    dali_wheel.stash(tmp_path / "call3", store)
    rebuilt = dali_wheel.reassemble(store, manifest)
    assert dali_wheel.sha256_of(rebuilt) == dali_wheel.sha256_of(dummy) == manifest["sha256"]
    (store / "parts" / manifest["parts"][1]["name"]).write_bytes(b"corrupted")
    with pytest.raises(ValueError, match="does not match its sha256"):
        dali_wheel.reassemble(store, manifest)

    real_parts = tmp_path / "real"
    dali_wheel.split(wheel, [], real_parts, part_mib=0.0005)
    record = dali_wheel.install(real_parts, tmp_path / "real_store", import_name="fasttrain_rehearsal_pkg")
    assert record["installed"] and record["importable"] and record["dali_version"] == "1.0"


def stage_entry(name: str, status: str) -> dict:
    return {"name": name, "status": status, "seconds": 1.0, "figures": {}}


def test_a_skipped_stage_fails_a_gpu_run_and_passes_only_a_dry_run(tmp_path):
    stages = [stage_entry("preflight", "ok"), stage_entry("loader", "skipped")]
    gpu = check_summary.finish({"dry_run": False, "stages": stages}, tmp_path)
    assert gpu["all_ok"] is False and gpu["problems"] == ["loader: skipped"]  # was all_ok=True: skipped counted as ok
    assert check_summary.finish({"dry_run": True, "stages": stages}, tmp_path)["all_ok"] is True


def test_a_gpu_call_that_needs_dali_fails_when_dali_was_not_importable(tmp_path):
    (tmp_path / "preflight.json").write_text(json.dumps({"suite": "preflight", "result": {
        "packages": {"nvidia.dali": {"version": None}}}}))
    stages = [stage_entry("preflight", "ok"), stage_entry("loader", "ok")]
    summary = check_summary.finish({"dry_run": False, "dali_required": True, "stages": stages}, tmp_path)
    assert summary["all_ok"] is False and "nvidia.dali was not importable" in summary["problems"][0]
    assert check_summary.finish({"dry_run": False, "dali_required": False, "stages": stages}, tmp_path)["all_ok"] is True


def test_suites_asked_to_require_dali_fail_without_it(monkeypatch):
    from fasttrain.errors import UserError
    from kernels_bench import core

    monkeypatch.setattr(core, "dali_importable", lambda: False)
    report, _, _ = run_suite(["preflight", "--device", "cpu", "--require-dali"])
    assert report["failed"] == ["nvidia.dali"]
    assert run_suite(["preflight", "--device", "cpu"])[0].get("failed") is None
    with pytest.raises(UserError, match="nvidia.dali is not importable"):
        run_suite(["loader", "--device", "cpu", "--smoke", "--backends", "torch,dali", "--require-dali"])


def test_stage_stopped_by_its_budget_is_recorded_as_timeout_and_the_rest_stay_listed(tmp_path):
    names = ["preflight", "step_resnet50", "t2t_attention"]
    check_summary.start(tmp_path, tmp_path, names, device="cuda", dry_run=False, call="1", dali_required=False)
    stopped = subprocess.run(["timeout", "--signal=INT", "1", sys.executable, "-c", "import time; time.sleep(30)"])
    entry = check_summary.record_stage(tmp_path, tmp_path, "step_resnet50", stopped.returncode, 1.0, 1)
    assert stopped.returncode == 124 and entry["status"] == "timeout" and "budget" in entry["reason"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == names
    assert summary["counts"] == {"ok": 0, "failed": 0, "skipped": 0, "timeout": 1, "not_run": 2}
    assert summary["all_ok"] is False


def test_an_interrupted_suite_says_where_it_was_and_keeps_finished_cases(tmp_path):
    cases = tmp_path / "cases.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "kernels_bench", "step", "--device", "cpu", "--quick", "--models",
                              "resnet18", "--variants", "study,channels_last", "--cases", str(cases)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in child.stdout:
        if line.startswith("... step resnet18 channels_last"):  # the study case has finished
            child.send_signal(signal.SIGINT)
            break
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr[-2000:]
    assert "interrupted at: step resnet18 channels_last" in stderr
    finished = [json.loads(line) for line in cases.read_text().splitlines()]
    assert [(c["suite"], c["variant"]) for c in finished] == [("step", "study")] and finished[0]["images_per_s"] > 0


def test_dali_reuse_check_catches_a_producer_that_refills_a_buffer_still_being_read():
    from kernels_bench.suites.dali_reuse import checksums_late, checksums_now, compare, ring_batches

    cpu = torch.device("cpu")
    source = [torch.full((2, 3, 4, 4), float(k)) for k in range(6)]
    reference = checksums_now(ring_batches(source, cpu), cpu)
    assert reference == [float(k * 96) for k in range(6)]
    assert compare(reference, checksums_late(ring_batches(source, cpu), lambda: None, lag=0))["passed"]
    assert not compare(reference, checksums_late(ring_batches(source, cpu), lambda: None, lag=2))["passed"]
    assert compare(reference, checksums_late(iter([s.clone() for s in source]), lambda: None, lag=2))["passed"]


def test_t2t_attention_times_the_shapes_the_model_runs_at_64px():
    from kernels_bench.suites.t2t_attention import SMOKE_KNOBS, model_attention_calls

    calls = model_attention_calls(1, 64, torch.device("cpu"), SMOKE_KNOBS)
    tokens = sorted({q[-2] for q, _, _, _ in calls})
    assert tokens[-1] == 1024  # the first token block at 64×64: 32×32 tokens (the old stage timed 256)
    assert all(dtype == "bfloat16" for *_, dtype in calls)


def test_loader_help_lists_its_own_options():
    result = subprocess.run([sys.executable, "-m", "kernels_bench", "loader", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "--batch-size" in result.stdout and "--require-dali" in result.stdout


def test_gpu_check_is_valid_bash_with_python3_and_no_install_step():
    script = SCRIPT.read_text()
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    assert "python -m" not in script and "python3 -m kernels_bench" in script
    assert "pip install" not in script and "timeout --signal=INT" in script and "PYTHONUNBUFFERED=1" in script


def test_usage_errors_exit_2(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--call", "7", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
    result = subprocess.run(["bash", str(SCRIPT), "--call", "1", "--only", "loader", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "not a stage of call 1" in result.stderr
    assert not (tmp_path / "summary.json").exists()
