"""`python -m kernels_bench`: suite dispatch, one-line errors, and the prepare suite's figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def bench(*argv):
    return subprocess.run([sys.executable, "-m", "kernels_bench", *map(str, argv)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_unknown_suite_is_a_one_line_error():
    result = bench("warp-drive")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown benchmark suite 'warp-drive'" in result.stderr and "prepare" in result.stderr


def test_prepare_suite_reports_throughput_and_memory(tmp_path):
    result = bench("prepare", "--quick", "--images", 200, "--size", 32, "--workdir", tmp_path,
                   "--json", tmp_path / "out.json", "--md", tmp_path / "out.md")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["suite"] == "prepare" and report["device"] == "cpu"
    figures = report["result"]
    assert figures["tree"]["decoded_images"] == 200
    assert [run["workers"] for run in figures["runs"]][0] == 1
    for run in figures["runs"]:
        assert run["images"] == 200 and run["images_per_s_decode"] > 0
        assert 10 < run["rss_anon_mib"] < 1536 and run["processes"] >= 1
    assert "| workers |" in (tmp_path / "out.md").read_text()
    assert bench("prepare", "--device", "cuda").returncode == 2
