"""kernels_bench step, e2e, kernels, parity and all: a tiny run of every suite, the report format, the pass rule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kernels_bench.__main__ import run_suite
from kernels_bench.suites.parity import accuracy_passes, relative_error

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
        assert case["model"] == "resnet18"
        if "skipped" in case:  # a CPU kernel that crashes this machine (oneDNN, see crash_guard) is skipped, with why
            assert case["skipped"].startswith("crashed: its first step killed a child process"), case
            continue
        assert case["images_per_s"] > 0 and case["peak_mem_mb"] > 0
        assert case["mfu"] is None and case["mfu_datasheet"] is None  # MFU only on a GPU
    study = step["cases"][0]
    assert study["vs_study"] == 1.0
    for case in step["cases"][1:]:
        if "images_per_s" in case:
            assert case["vs_study"] == pytest.approx(case["images_per_s"] / study["images_per_s"], rel=0.01)
    assert step["result"]["goals"]["cpu_resnet18_fast_vs_study_ge_1.3x"]["met"] is False  # no "fast" case measured
    assert "FlopCounterMode" in step["result"]["flops_note"]


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
        assert 0 < case["forward_noise_floor"] < 1e-5  # fp32 vs float64: rounding only
        assert case["forward_tolerance"] == pytest.approx(case["forward_noise_floor"] * 2**16, rel=1e-3)
        assert case["passed"] == (case["accuracy_passed"] and case["forward_passed"])
    assert parity["result"]["compile_in_fast_path"] is False and "compile omitted" in parity["result"]["note"]


def test_parity_exits_non_zero_when_a_family_fails(monkeypatch, capsys):
    from kernels_bench import __main__ as cli
    from kernels_bench.suites import parity

    argv = ["parity", "--device", "cpu", "--smoke", "--forward-only", "--families", "t2t"]
    assert cli.main(argv) == 0
    monkeypatch.setattr(parity, "BF16_OVER_FP32_ROUNDING", 0.0)  # no error tolerated: bf16 must fail
    assert cli.main(argv) == 1
    assert "FAIL" in capsys.readouterr().out


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


def test_crash_guard_names_each_crashing_case_and_goes_on():
    from kernels_bench.core import first_crashes

    cases = [{}, {"crash": True}, {}, {"crash": True}, {}]
    crashed = first_crashes("tests.crash_workers:crash_on_marked", cases)
    assert sorted(crashed) == [1, 3]
    assert all("SIGSEGV" in reason for reason in crashed.values())
    assert first_crashes("tests.crash_workers:crash_on_marked", [{}, {}]) == {}


def test_step_fast_variant_is_what_the_device_gets_and_forced_bf16_beside_it():
    import torch

    from fasttrain.engine.runtime import resolve_amp
    from kernels_bench.suites.step import VARIANTS

    cpu = torch.device("cpu")
    fast, forced = VARIANTS["fast"].resolved(cpu), VARIANTS["fast_bf16"].resolved(cpu)
    assert fast.amp == resolve_amp("auto", cpu) and fast.channels_last and fast.compile
    assert forced.amp == "bf16" and forced.channels_last and forced.compile


def test_step_skips_fast_bf16_when_it_equals_fast_here():
    report, _, _ = run_suite(["step", "--device", "cpu", "--smoke", "--models", "resnet18",
                              "--variants", "fast,fast_bf16", "--compile-models", ""])
    fast, forced = report["cases"]
    assert "compile limited" in fast["skipped"]
    from fasttrain.engine.runtime import resolve_amp

    if resolve_amp("auto", __import__("torch").device("cpu")) == "bf16":
        assert forced["skipped"].startswith("same settings as fast")
    else:
        assert "compile limited" in forced["skipped"]
