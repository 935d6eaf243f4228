"""The cache: build, reuse, rebuild, checks and checksums, skipped files, interruption, concurrent builders."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fasttrain.data.__main__ import main
from fasttrain.data.cache import CacheError, open_cache
from fasttrain.data.prepare import prepare_cache
from fasttrain.data.splits import stratified_split
from fasttrain.data.synthetic import write_synthetic
from fasttrain.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def pristine_tin(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("tin") / "tree", classes=4, per_class=10, val_per_class=3,
                           size=32, seed=4)


@pytest.fixture
def tin(pristine_tin, tmp_path):
    return shutil.copytree(pristine_tin, tmp_path / "tin")


def build(root, **kwargs):
    kwargs = {"image_size": 32, "workers": 1, **kwargs}
    return prepare_cache("tiny-imagenet", root, **kwargs)


def test_cache_contract(tin):
    path = build(tin)
    assert path == tin / "process"
    cache = open_cache(path, verify=True)
    assert cache.splits == ("train", "val", "test")
    assert cache.num_classes == 4 and cache.class_ids == ["s0000", "s0001", "s0002", "s0003"]
    assert cache.image_size == 32 and len(cache.class_names) == 4
    sizes = {}
    for split in cache.splits:
        images, labels = cache.split(split)
        assert isinstance(images, np.memmap) and not images.flags.writeable
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
        assert labels.dtype == np.int64 and labels.shape == (len(images),)
        assert labels.min() >= 0 and labels.max() < 4
        assert images.reshape(len(images), -1).std(axis=1).min() > 5  # real pictures, no zero rows
        sizes[split] = len(images)
    assert sizes == {"train": 32, "val": 8, "test": 12}
    with pytest.raises(CacheError, match="no split 'holdout'"):
        cache.split("holdout")


def test_recorded_split_reproduces_the_rows(tin):
    cache = open_cache(build(tin, seed=7, val_ratio=0.3))
    record = cache.meta["split"]
    assert record["seed"] == 7 and record["val_ratio"] == 0.3
    source_labels = np.repeat(np.arange(4), 10)
    _, val = stratified_split(source_labels, 0.3, seed=7)
    assert record["val_indices"] == val.tolist()
    _, val_labels = cache.split("val")
    assert np.array_equal(val_labels, source_labels[val])
    # the val rows are exactly the decoded files the record points at
    files = sorted((tin / "train").glob("*/images/*.JPEG"))
    images, _ = cache.split("val")
    first = cv2.cvtColor(cv2.imread(str(files[val[0]])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(images[0], first)


def test_worker_processes_give_identical_bytes(tin, tmp_path):
    one = open_cache(build(tin, cache_dir=tmp_path / "one", workers=1))
    two = open_cache(build(tin, cache_dir=tmp_path / "two", workers=2))
    for split in one.splits:
        assert one.meta["splits"][split] == two.meta["splits"][split]


def test_up_to_date_cache_is_reused_and_stale_one_rebuilt(tin, caplog):
    caplog.set_level(logging.INFO, logger="fasttrain.data")
    meta = build(tin) / "meta.json"
    stamp = meta.stat().st_ino, meta.stat().st_mtime_ns
    build(tin)
    assert (meta.stat().st_ino, meta.stat().st_mtime_ns) == stamp
    assert "up to date" in caplog.text

    with pytest.raises(UserError, match="stale.*image_size.*--no-rebuild"):
        build(tin, image_size=48, rebuild=False)
    assert open_cache(tin / "process").image_size == 32
    assert open_cache(build(tin, image_size=48)).image_size == 48

    extra = tin / "train" / "s0001" / "images" / "extra.JPEG"
    shutil.copy(next(extra.parent.glob("*.JPEG")), extra)
    with pytest.raises(UserError, match="source files changed"):
        build(tin, image_size=48, rebuild=False)
    assert open_cache(build(tin, image_size=48)).count("train") + open_cache(tin / "process").count("val") == 41


def test_corrupt_files_are_skipped_listed_and_strict_names_them(tin, caplog):
    images = tin / "train" / "s0002" / "images"
    (images / "zero.JPEG").write_bytes(b"")
    good = (images / "s0002_0.JPEG").read_bytes()
    (images / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (tin / "val" / "images" / "val_0.JPEG").write_bytes(b"garbage" * 20)

    with pytest.raises(UserError, match=r"unreadable image .*(truncated|zero)\.JPEG.*--strict"):
        build(tin, strict=True)
    assert not (tin / "process").exists() and not list(tin.glob(".process.tmp-*"))

    caplog.set_level(logging.INFO, logger="fasttrain.data")
    cache = open_cache(build(tin), verify=True)
    skipped = {entry["path"]: entry for entry in cache.meta["skipped"]}
    assert set(skipped) == {"train/s0002/images/zero.JPEG", "train/s0002/images/truncated.JPEG",
                            "val/images/val_0.JPEG"}
    assert skipped["val/images/val_0.JPEG"]["split"] == "test"
    assert cache.count("train") + cache.count("val") == 40 and cache.count("test") == 11
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 unreadable images" in warnings[0].getMessage()
    for split in cache.splits:
        stored, _ = cache.split(split)
        assert stored.reshape(len(stored), -1).std(axis=1).min() > 5  # no blank row where a file failed
    with pytest.raises(UserError, match="unreadable image"):
        build(tin, strict=True)  # the reusable cache has skipped files: strict still refuses it


def test_flipped_byte_is_caught_by_verify_only(tin):
    path = build(tin)
    images = path / "images_train.npy"
    with open(images, "r+b") as f:
        f.seek(images.stat().st_size - 1000)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    open_cache(path)  # cheap checks cannot see it
    with pytest.raises(CacheError, match="images_train.npy fails its sha256"):
        open_cache(path, verify=True)
    result = subprocess.run([sys.executable, "-m", "fasttrain.data", "info", str(path), "--verify"],
                            capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "images_train.npy fails its sha256" in result.stderr


def test_truncated_or_changed_files_are_named_on_open(tin):
    path = build(tin)
    labels = np.load(path / "labels_test.npy")
    labels[0] = 99
    np.save(path / "labels_test.npy", labels)
    with pytest.raises(CacheError, match=r"labels_test.npy has labels outside \[0, 4\)"):
        open_cache(path)
    with open(path / "images_val.npy", "r+b") as f:
        f.truncate((path / "images_val.npy").stat().st_size - 10)
    with pytest.raises(CacheError, match="images_val.npy is .* bytes.*truncated"):
        open_cache(path)
    with pytest.raises(UserError, match="stale.*images_val.npy"):
        build(tin, rebuild=False)
    open_cache(build(tin), verify=True)


def test_incomplete_cache_and_leftover_temp_dir_are_never_accepted(tin, capsys):
    path = build(tin)
    leftover = tin / ".process.tmp-12345-deadbeef"
    shutil.copytree(path, leftover)
    (path / "meta.json").unlink()
    with pytest.raises(CacheError, match="meta.json is missing"):
        open_cache(path)
    assert run_cli(lambda: main(["info", str(path)]), debug=False) == 2
    assert "meta.json is missing" in capsys.readouterr().err
    open_cache(build(tin), verify=True)
    assert not leftover.exists()


def test_foreign_cache_dir_is_not_replaced(tin, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not a fasttrain cache"):
        build(tin, cache_dir=foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"


def _prepare_command(root):
    return [sys.executable, "-m", "fasttrain.data", "prepare", "--source", "tiny-imagenet", "--root", str(root),
            "--image-size", "32", "--workers", "1"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_prepare_leaves_no_cache_a_later_run_accepts(tin, signum):
    # a FIFO among the images blocks the decoder mid-build, so the kill lands while it is working
    blocker = tin / "train" / "s0003" / "images" / "zzz_blocker.JPEG"
    os.mkfifo(blocker)
    proc = subprocess.Popen(_prepare_command(tin), env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(tin.glob(".process.tmp-*/images_train.npy")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not (tin / "process").exists()
    if signum == signal.SIGTERM:
        assert not list(tin.glob(".process.tmp-*"))  # cleaned up on the way out
    with pytest.raises(CacheError):
        open_cache(tin / "process")
    blocker.unlink()
    open_cache(build(tin), verify=True)
    assert not list(tin.glob(".process.tmp-*"))


def test_two_processes_preparing_at_once(tin):
    procs = [subprocess.Popen(_prepare_command(tin), env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("built cache") == 1 and stderr.count("up to date") == 1, stderr
    assert all(out.strip() == str(tin / "process") for out, _ in outputs)
    cache = open_cache(tin / "process", verify=True)
    assert json.loads((tin / "process" / "meta.json").read_text())["build"]["images"] == 52
    assert cache.count("train") == 32
