"""`python -m fasttrain.data`: one-line errors with exit status 2 that name the path, and nothing left behind."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fasttrain.data.__main__ import main
from fasttrain.data.synthetic import write_synthetic
from fasttrain.errors import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine_tin(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("tin") / "tree", classes=3, per_class=4, val_per_class=2,
                           size=32, seed=2)


@pytest.fixture
def tin(pristine_tin, tmp_path):
    return shutil.copytree(pristine_tin, tmp_path / "tin")


def run(argv, capsys):
    status = run_cli(lambda: main([str(a) for a in argv]), debug=False)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def assert_no_cache(root):
    assert not (root / "process").exists()
    assert not list(root.glob(".process.tmp-*"))


def prepare_args(root, *extra):
    return ["prepare", "--source", "tiny-imagenet", "--root", root, "--workers", "1", "--image-size", "32", *extra]


def test_missing_wnids(tin, capsys):
    (tin / "wnids.txt").unlink()
    status, _, err = run(prepare_args(tin), capsys)
    assert_one_line_error(status, err, tin / "wnids.txt")
    assert_no_cache(tin)


def test_missing_val_annotations(tin, capsys):
    (tin / "val" / "val_annotations.txt").unlink()
    status, _, err = run(prepare_args(tin), capsys)
    assert_one_line_error(status, err, tin / "val" / "val_annotations.txt")
    assert_no_cache(tin)


def test_unknown_id_in_annotations(tin, capsys):
    annotations = tin / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    lines[1] = lines[1].replace("s0001", "n99999999")
    annotations.write_text("\n".join(lines) + "\n")
    status, _, err = run(prepare_args(tin), capsys)
    assert_one_line_error(status, err, f"{annotations}:2", "n99999999", "wnids.txt")
    assert_no_cache(tin)


def test_empty_class_folder(tin, capsys):
    images = tin / "train" / "s0002" / "images"
    shutil.rmtree(images)
    images.mkdir()
    status, _, err = run(prepare_args(tin), capsys)
    assert_one_line_error(status, err, "empty class folder", images)
    assert_no_cache(tin)


def test_empty_imagefolder_class(tmp_path, capsys):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    status, _, err = run(["prepare", "--source", "imagefolder", "--root", tmp_path, "--workers", "1"], capsys)
    assert_one_line_error(status, err, "empty class folder", tmp_path / "train" / "cat")
    assert_no_cache(tmp_path)


@pytest.mark.parametrize("source", ["tiny-imagenet", "imagefolder"])
def test_root_that_is_not_a_data_set(tmp_path, capsys, source):
    (tmp_path / "random.txt").write_text("hello")
    status, _, err = run(["prepare", "--source", source, "--root", tmp_path], capsys)
    assert_one_line_error(status, err, tmp_path, "not a")
    assert_no_cache(tmp_path)
    status, _, err = run(["prepare", "--source", source, "--root", tmp_path / "nowhere"], capsys)
    assert_one_line_error(status, err, tmp_path / "nowhere", "does not exist")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("argv, needles", [
    (["--val-ratio", "1.5"], ["val_ratio", "[0, 1)", "got 1.5"]),
    (["--val-ratio", "-0.1"], ["val_ratio", "[0, 1)", "got -0.1"]),
    (["--val-ratio", "abc"], ["--val-ratio"]),
    (["--workers", "0"], ["workers", "all cores", "got 0"]),
    (["--workers", "-2"], ["workers", "all cores", "got -2"]),
    (["--image-size", "3"], ["image_size", "[8, 1024]", "got 3"]),
    (["--image-size", "1025"], ["image_size", "[8, 1024]", "got 1025"]),
    (["--seed", "-1"], ["seed", "got -1"]),
])
def test_bad_prepare_arguments(tin, capsys, argv, needles):
    status, _, err = run(prepare_args(tin, *argv), capsys)
    assert_one_line_error(status, err, *needles)
    assert_no_cache(tin)


@pytest.mark.parametrize("name, value", [
    ("image_size", 7), ("image_size", 1025), ("image_size", 32.0), ("image_size", True), ("image_size", "32"),
    ("val_ratio", 1.0), ("val_ratio", -0.01), ("val_ratio", None),
    ("seed", -1), ("seed", 0.5), ("seed", False),
    ("workers", 0), ("workers", 2.0), ("workers", True),
])
def test_prepare_cache_refuses_bad_parameters_before_reading_anything(tmp_path, name, value):
    from fasttrain.data.prepare import prepare_cache
    from fasttrain.errors import UserError

    args = {"image_size": 32, "val_ratio": 0.2, "seed": 0, "workers": 1, name: value}
    with pytest.raises(UserError) as err:
        prepare_cache("tiny-imagenet", tmp_path / "nowhere", **args)  # the root is never looked at
    assert str(err.value).startswith(f"{name} ") and repr(value) in str(err.value) and "\n" not in str(err.value)


def test_prepare_cache_accepts_numpy_integers_and_range_edges(pristine_tin, tmp_path):
    import numpy as np

    from fasttrain.data.cache import open_cache
    from fasttrain.data.prepare import prepare_cache

    path = prepare_cache("tiny-imagenet", pristine_tin, cache_dir=tmp_path / "cache", image_size=np.int64(8),
                         val_ratio=np.float32(0.0), seed=np.int32(0), workers=np.int64(1))
    cache = open_cache(path)
    assert (cache.image_size, cache.splits, cache.meta["split"]["val_ratio"]) == (8, ("train", "test"), 0.0)


def test_bad_command_lines(tmp_path, capsys):
    assert_one_line_error(*run(["prepare", "--source", "cifar", "--root", tmp_path], capsys)[::2], "cifar")
    assert_one_line_error(*run(["frobnicate"], capsys)[::2], "frobnicate")
    assert_one_line_error(*run(["synth", "--out", tmp_path / "s", "--classes", "1"], capsys)[::2], "classes")
    assert_one_line_error(*run(["info", tmp_path / "nothing"], capsys)[::2], tmp_path / "nothing")


def test_real_entry_point_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fasttrain.data", "prepare", "--source", "tiny-imagenet",
                             "--root", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_prepare_then_info(tin, capsys):
    status, out, _ = run(prepare_args(tin), capsys)
    cache_dir = Path(out.strip())
    assert status == 0 and cache_dir.parent == tin / "process" and cache_dir.name.startswith("32px-")
    status, out, _ = run(["info", cache_dir, "--verify"], capsys)
    assert status == 0
    assert "train      9 images" in out and "val        3 images" in out and "test       6 images" in out
    assert "s0002" in out and "every sha256 checksum matches" in out
