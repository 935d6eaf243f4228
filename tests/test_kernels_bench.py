"""kernels_bench step, e2e, kernels, parity and all: a tiny run of every suite, the report format, the pass rule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kernels_bench.__main__ import run_suite
from kernels_bench.parity import accuracy_passes, relative_error

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def all_smoke(tmp_path_factory):
    """One `all --smoke` run (every suite, smallest sizes), written as JSON and markdown like a user would."""
    out = tmp_path_factory.mktemp("bench")
    from kernels_bench import __main__ as cli

    status = cli.main(["all", "--device", "cpu", "--smoke", "--json", str(out / "all.json"), "--md", str(out / "all.md")])
    return status, json.loads((out / "all.json").read_text()), (out / "all.md").read_text()


def suite(report, name):
    return next(s for s in report["suites"] if s["suite"] == name)


def test_all_runs_every_suite_and_reports_versions(all_smoke):
    status, report, markdown = all_smoke
    assert status == 0 and report["failed"] == []
    assert [s["suite"] for s in report["suites"]] == ["prepare", "loader", "kernels", "step", "e2e", "parity"]
    for sub in report["suites"]:
        assert sub["device"] == "cpu" and sub["versions"]["torch"] and "load_average_1m_at_start" in sub["environment"]
    for heading in ("### step", "### e2e", "### kernels", "### parity", "| workers |"):
        assert heading in markdown


def test_step_cases_measure_every_variant_asked(all_smoke):
    step = suite(all_smoke[1], "step")
    variants = [c["variant"] for c in step["cases"]]
    assert variants == ["study", "channels_last", "amp"]
    for case in step["cases"]:
        assert case["model"] == "resnet18" and case["images_per_s"] > 0 and case["peak_mem_mb"] > 0
        assert case["mfu"] is None  # MFU only on a GPU
    study, cl = step["cases"][0], step["cases"][1]
    assert study["vs_study"] == 1.0 and cl["vs_study"] == pytest.approx(cl["images_per_s"] / study["images_per_s"], rel=0.01)
    assert step["result"]["goals"]["cpu_resnet18_fast_vs_study_ge_5x"]["met"] is False  # no "fast" case measured


def test_e2e_compares_trainer_with_model_only_and_study(all_smoke):
    e2e = suite(all_smoke[1], "e2e")
    kinds = [(c["path"], c["kind"]) for c in e2e["cases"]]
    assert kinds == [("fast", "trainer"), ("study", "trainer"), ("fast", "model_only")]
    fast, study, model_only = e2e["cases"]
    assert study["backend"] == "reference" and fast["backend"] in ("dali", "torch")
    assert fast["steps"] == study["steps"] == 6
    assert e2e["result"]["e2e_vs_model_only"] == pytest.approx(fast["images_per_s"] / model_only["images_per_s"], rel=0.01)
    assert e2e["result"]["fast_vs_study"] == pytest.approx(fast["images_per_s"] / study["images_per_s"], rel=0.01)


def test_kernels_cover_convs_attention_and_crop(all_smoke):
    cases = suite(all_smoke[1], "kernels")["cases"]
    grouped = {(c["dtype"], c["memory_format"]) for c in cases if c["kernel"] == "grouped_conv3x3"}
    assert grouped == {(d, f) for d in ("fp32", "bf16", "fp16") for f in ("nchw", "channels_last")}
    assert {c["impl"] for c in cases if c["kernel"] == "attention"} == {"sdpa", "explicit_softmax"}
    assert {c["impl"] for c in cases if c["kernel"] == "random_resized_crop"} == {"torch_batched_kernel", "dali_pipeline"}
    assert all(c.get("ms", 1) > 0 and c.get("images_per_s", 1) > 0 for c in cases)


def test_parity_reports_both_paths_over_seeds(all_smoke):
    parity = suite(all_smoke[1], "parity")
    assert [c["family"] for c in parity["cases"]] == ["resnet", "t2t"]
    for case in parity["cases"]:
        assert len(case["fast_accs"]) == len(case["study_accs"]) == case["seeds"] == 2
        assert 0 <= case["fast_acc"] <= 1 and case["study_loss"] > 0
        assert case["accuracy_passed"] == accuracy_passes(case["fast_acc"], case["study_acc"], case["fast_std"], case["study_std"])
        assert case["forward_rel_err"] < 0.05  # bf16 vs fp32 logits of the same weights stay close
        assert case["passed"] == (case["accuracy_passed"] and case["forward_passed"])
    assert parity["result"]["compile_in_fast_path"] is False and "compile omitted" in parity["result"]["note"]


def test_accuracy_rule_uses_one_point_floor_and_twice_the_std():
    assert accuracy_passes(0.500, 0.509, 0.0, 0.0)  # within 1 point
    assert not accuracy_passes(0.500, 0.515, 0.0, 0.0)
    assert accuracy_passes(0.50, 0.55, 0.03, 0.01)  # 5 points ≤ 2 × 3 points
    assert not accuracy_passes(0.50, 0.57, 0.03, 0.01)


def test_relative_error():
    import torch

    reference = torch.tensor([3.0, 4.0])
    assert relative_error(reference, reference) == 0.0
    assert relative_error(torch.tensor([3.0, 4.5]), reference) == pytest.approx(0.1)


@pytest.mark.parametrize("argv, message", [
    (["step", "--device", "cpu", "--models", "resnet9"], "unknown model(s) resnet9"),
    (["parity", "--device", "cpu", "--families", "mlp"], "unknown --families"),
    (["all", "--device", "cpu", "--suites", "step,warp"], "unknown suite(s) in --suites: warp"),
])
def test_bad_choices_are_one_line_errors(argv, message):
    result = subprocess.run([sys.executable, "-m", "kernels_bench", *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_step_compile_variants_report_compile_time():
    report, _, _ = run_suite(["step", "--device", "cpu", "--smoke", "--models", "resnet18", "--variants", "study,compile,fast"])
    compiled = [c for c in report["cases"] if c["variant"] in ("compile", "fast")]
    assert len(compiled) == 2 and all(c["compile_s"] > 0 and c["images_per_s"] > 0 for c in compiled)
    assert report["result"]["per_model"]["resnet18"]["fast_vs_study"] == compiled[1]["vs_study"]


def test_gpu_check_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(REPO / "kernels_bench" / "gpu_check.sh")]).returncode == 0
