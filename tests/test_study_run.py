"""The study runner with the real trainer: quick runs end to end, skips, failures recorded, the report rendered."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fasttrain.errors import run_cli
from fasttrain.study.__main__ import main as study_main
from fasttrain.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "configs" / "studies" / "seed.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def study(argv: list[str]) -> int:
    return run_cli(lambda: study_main(argv))


def report_rows(report: str) -> dict[str, str]:
    """The runs table's rows (first table of the report), by run name."""
    section = report.split("## Runs", 1)[1].split("\n## ", 1)[0]
    return {line.split("|")[1].strip(): line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| run |")}


def assert_valid_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, path
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400 and pixels[..., :3].std() > 0.05, path


def test_quick_seed_suite_two_runs_then_skip(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert study([str(SEED), "--quick", "--only", "vgg19_bn", "vgg19"]) == 0
    out = tmp_path / "runs" / "seed-quick"
    for name in ("vgg19_bn", "vgg19"):
        results = json.loads(RunDir(out / name).results.read_text())
        assert results["status"] == "finished" and results["epochs_done"] == 2 and 0.0 <= results["test_top1"] <= 1.0
    attempts = json.loads((out / "suite.json").read_text())["attempts"]
    assert {n: a["status"] for n, a in attempts.items()} == {"vgg19_bn": "finished", "vgg19": "finished"}
    assert "epoch 2/2" in (out / "logs" / "vgg19.log").read_text()

    report = (out / "report" / "REPORT.md").read_text()
    rows = report_rows(report)
    assert len(rows) == 8, "every run of the suite has a row, run or not"
    assert "| finished |" in rows["vgg19_bn"] and "| finished |" in rows["vgg19"]
    assert "study top-1" not in report  # synthetic data at 1/8 width: the study's numbers do not apply
    assert all("**not run**" in rows[n] for n in rows if not n.startswith("vgg19"))
    assert "](normalization_curves.png)" in report
    assert_valid_png(out / "report" / "normalization_curves.png")
    assert not (out / "report" / "depth_curves.png").exists()

    capsys.readouterr()
    log_before = (out / "logs" / "vgg19.log").read_text()
    assert study([str(SEED), "--quick", "--only", "vgg19", "--no-report"]) == 0
    assert "vgg19: finished already" in capsys.readouterr().out
    assert (out / "logs" / "vgg19.log").read_text() == log_before, "a finished run is not launched again"


def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.toml").write_text('[model]\nname = "resnet18"\nwidth = 0.125\n\n[train]\nepochs = 1\n')
    (tmp_path / "s.toml").write_text(
        '[[run]]\nname = "no_folder"\nconfig = "base.toml"\n'
        'overrides = ["data.source=imagefolder", "data.root=missing-folder"]\n\n'
        '[[run]]\nname = "no_tin"\nconfig = "base.toml"\n'
        'overrides = ["data.source=tiny-imagenet", "data.root=missing-tin"]\n\n'
        '[[comparison]]\nname = "both"\nruns = ["no_folder", "no_tin"]\n')
    assert study(["s.toml", "--out", "out"]) == 1
    captured = capsys.readouterr()
    assert "2 run(s) failed" in captured.err
    attempts = json.loads((tmp_path / "out" / "suite.json").read_text())["attempts"]
    assert attempts["no_folder"]["status"] == "failed" and attempts["no_folder"]["exit_code"] == 2
    assert "missing-folder" in attempts["no_folder"]["error"]
    assert attempts["no_tin"]["status"] == "failed" and "missing-tin" in attempts["no_tin"]["error"]
    rows = report_rows((tmp_path / "out" / "report" / "REPORT.md").read_text())
    assert re.search(r"\*\*failed\*\*: exit 2: .*missing-folder", rows["no_folder"])
    assert re.search(r"\*\*failed\*\*: exit 2: .*missing-tin", rows["no_tin"])


@pytest.mark.slow
@pytest.mark.timeout(1800)  # eight trainer processes: ~4 min on 2 idle cores, far longer on a busy machine
def test_quick_seed_suite_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert study([str(SEED), "--quick"]) == 0
    out = tmp_path / "runs" / "seed-quick"
    report_dir = out / "report"
    report = (report_dir / "REPORT.md").read_text()
    rows = report_rows(report)
    assert list(rows) == ["vgg19_bn", "vgg19", "resnet18", "resnet34", "resnet50", "resnet50_noskip", "resnext50",
                          "t2t_vit_t_14"]
    assert all("| finished |" in row for row in rows.values())
    for comparison in ("normalization", "depth", "skip_connections", "cardinality", "transformer"):
        assert f"]({comparison}_curves.png)" in report
        assert_valid_png(report_dir / f"{comparison}_curves.png")
    for png in report_dir.glob("*.png"):
        assert_valid_png(png)

    # an interrupted run (checkpoints, no results.json) is resumed, not restarted
    RunDir(out / "resnet18").results.unlink()
    capsys.readouterr()
    assert study([str(SEED), "--quick", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "resume:" in printed and printed.count("finished already") == 7
    assert json.loads(RunDir(out / "resnet18").results.read_text())["status"] == "finished"
