"""What the command lines print: nothing but their output when the reader closes the pipe (`| head`), hints that
are complete commands, and predict's lines without repeated names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fasttrain.data.cache import CacheError, open_cache
from fasttrain.data.prepare import prepare_cache
from fasttrain.data.synthetic import write_synthetic
from fasttrain.errors import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    tree = write_synthetic(tmp_path_factory.mktemp("pipe") / "tree", classes=3, per_class=4, val_per_class=2, size=16,
                           seed=1)
    return prepare_cache("tiny-imagenet", tree, image_size=16, val_ratio=0.25, seed=0, workers=1)


def closed_reader(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m <args> | head -0`: the reader has closed the pipe before the command writes a byte."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", *args], cwd=REPO, stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", [["fasttrain.data", "info", "CACHE"], ["fasttrain.data", "info", "CACHE", "--verify"],
                                     ["fasttrain", "--cfg", "configs/quickstart.toml", "--print-config"],
                                     ["fasttrain.models"]])
def test_a_closed_pipe_ends_a_command_quietly(small_cache, command):
    result = closed_reader([str(small_cache) if arg == "CACHE" else arg for arg in command])
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.stderr == "", result.stderr
    assert result.returncode == 141  # 128 + SIGPIPE: what a Unix tool whose reader went away reports


def test_a_command_whose_output_is_read_still_exits_0(small_cache):
    result = subprocess.run([sys.executable, "-m", "fasttrain.data", "info", str(small_cache)], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0 and "s0002" in result.stdout and result.stderr == ""


def test_the_missing_cache_hint_is_a_complete_prepare_command(tmp_path):
    from fasttrain.data.__main__ import _build_parser

    missing = tmp_path / "nowhere" / "process"
    with pytest.raises(CacheError) as refused:
        open_cache(missing)
    message = str(refused.value)
    command = message.split("build it with: ", 1)[1].split(" (", 1)[0].split()
    assert command[:4] == ["python", "-m", "fasttrain.data", "prepare"], message
    # the data CLI itself accepts it once a source and root are filled in
    filled = [{"SOURCE": "imagefolder", "DATA": str(tmp_path)}.get(arg, arg) for arg in command[4:]]
    parsed = _build_parser().parse_args(["prepare", *filled])
    assert parsed.source == "imagefolder" and parsed.cache_dir == str(missing)


def test_predict_prints_a_class_once_when_its_id_is_its_name():
    from fasttrain.inference.predict import format_line

    folder = {"path": "a.jpg", "topk": [{"class_index": 0, "class_id": "Bag", "class_name": "Bag", "probability": 0.75},
                                        {"class_index": 1, "class_id": "Coat", "class_name": "Coat", "probability": 0.25}]}
    assert format_line(folder) == "a.jpg: 'Bag' 0.7500  'Coat' 0.2500"
    wordnet = {"path": "b.jpg", "topk": [{"class_index": 3, "class_id": "n01443537", "class_name": "goldfish",
                                          "probability": 0.5}]}
    assert format_line(wordnet) == "b.jpg: n01443537 'goldfish' 0.5000"


def test_run_cli_still_reports_a_user_error_in_one_line(capsys):
    from fasttrain.errors import UserError

    def fails():
        raise UserError("something is wrong; fix it")

    assert run_cli(fails, debug=False) == 2
    assert capsys.readouterr().err == "error: something is wrong; fix it\n"
