"""The cache: build, reuse, rebuild, checks and checksums, skipped files, interruption, concurrent builders; one cache
per set of decode parameters side by side, the single-cache layout moved, the train split's mean/std."""

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

from fasttrain.atomic import exclusive_lock
from fasttrain.data.__main__ import main
from fasttrain.data.cache import CacheError, cache_name, decode_params, open_cache
from fasttrain.data.prepare import default_cache_dir, prepare_cache
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


def cache_at(root, image_size=32, val_ratio=0.2, seed=0):
    """Where the default cache of these parameters lives: <root>/process/<size>px-<hash>/."""
    return default_cache_dir(root, decode_params("tiny-imagenet", image_size, val_ratio, seed, "carve"))


def stamps(folder):
    """(inode, mtime) of every file: a rebuild or a rewrite changes them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_cache_contract(tin):
    path = build(tin)
    assert path == tin / "process" / cache_name(decode_params("tiny-imagenet", 32, 0.2, 0, "carve"))
    assert path.name.startswith("32px-")
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

    extra = tin / "train" / "s0001" / "images" / "extra.JPEG"
    shutil.copy(next(extra.parent.glob("*.JPEG")), extra)
    with pytest.raises(UserError, match="stale.*source files changed.*--no-rebuild"):
        build(tin, rebuild=False)
    cache = open_cache(build(tin))
    assert cache.count("train") + cache.count("val") == 41


def test_caches_of_other_sizes_and_splits_live_side_by_side(tin, caplog, capsys):
    """Issue 20 item 2: another image_size (or val_ratio, split seed) is another cache; none is rebuilt in place."""
    caplog.set_level(logging.INFO, logger="fasttrain.data")
    first = build(tin)
    before = stamps(first)
    others = [build(tin, image_size=48), build(tin, val_ratio=0.3), build(tin, seed=1), build(tin, image_size=48)]
    assert len({first, *others}) == 4 and all(p.parent == tin / "process" for p in others)
    assert others[0].name.startswith("48px-") and others[1].name.startswith("32px-")
    assert stamps(first) == before, "the 32 px cache was rewritten"
    caplog.clear()
    assert build(tin) == first and stamps(first) == before  # as an eval of a 32 px checkpoint would ask
    assert "up to date" in caplog.text and "built cache" not in caplog.text
    for path, size in ((first, 32), (others[0], 48), (others[1], 32)):
        assert open_cache(path, verify=True).image_size == size
    assert open_cache(others[1]).count("val") == 12 and open_cache(first).count("val") == 8

    assert main(["info", str(tin)]) == 0
    listing = capsys.readouterr().out
    assert "4 caches under" in listing
    for path in (first, *others):
        assert path.name in listing
    assert "48px tiny-imagenet, val carved (val_ratio 0.2, seed 0)" in listing
    assert "val_ratio 0.3" in listing and "seed 1)" in listing


def test_explicit_cache_dir_of_other_parameters_is_refused_not_rebuilt(tin, tmp_path):
    mine = build(tin, cache_dir=tmp_path / "mine")
    before = stamps(mine)
    for kwargs, fragment in (({"image_size": 48}, "48px"), ({"val_ratio": 0.3}, "val_ratio 0.3")):
        with pytest.raises(UserError) as caught:
            build(tin, cache_dir=mine, **kwargs)
        line = str(caught.value)
        assert "\n" not in line and str(mine) in line and "32px tiny-imagenet" in line and fragment in line
        assert "data.cache_dir" in line
    assert stamps(mine) == before
    assert build(tin, cache_dir=mine) == mine and stamps(mine) == before


def single_cache_layout(tin):
    """A cache as earlier versions wrote it: its files right in <root>/process/, no mean/std, no val_source."""
    old = build(tin, cache_dir=tin / "process")
    meta = json.loads((old / "meta.json").read_text())
    meta.pop("pixel_stats")
    meta["build_params"].pop("val_source")
    for key in ("val_source", "val_from", "test_from"):
        meta["split"].pop(key)
    (old / "meta.json").write_text(json.dumps(meta))
    return old


def test_single_cache_layout_is_moved_into_its_own_folder_without_decoding(tin, caplog):
    old = single_cache_layout(tin)
    images = {p.name: p.stat().st_ino for p in old.glob("*.npy")}
    caplog.set_level(logging.INFO, logger="fasttrain.data")
    caplog.clear()  # only what the move logs: building the old layout above may have been captured already
    moved = build(tin)
    assert moved == cache_at(tin) and "built cache" not in caplog.text and "moved the cache" in caplog.text
    assert {p.name: p.stat().st_ino for p in moved.glob("*.npy")} == images  # renamed, not decoded again
    assert not (tin / "process" / "meta.json").exists()
    cache = open_cache(moved, verify=True)
    train, _ = cache.split("train")
    assert cache.meta["pixel_stats"]["mean"] == pytest.approx(train.mean(axis=(0, 1, 2)) / 255, abs=1e-6)

    # a move cut short (some files renamed, meta.json not yet) is finished by the next prepare
    shutil.rmtree(tin / "process")
    single_cache_layout(tin)
    staging = tin / "process" / ".single-cache-moving"
    staging.mkdir()
    os.rename(tin / "process" / "images_train.npy", staging / "images_train.npy")
    assert build(tin) == cache_at(tin)
    open_cache(cache_at(tin), verify=True)
    assert not staging.exists() and not (tin / "process" / "images_val.npy").exists()


def test_corrupt_files_are_skipped_listed_and_strict_names_them(tin, caplog):
    images = tin / "train" / "s0002" / "images"
    (images / "zero.JPEG").write_bytes(b"")
    good = (images / "s0002_0.JPEG").read_bytes()
    (images / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (tin / "val" / "images" / "val_0.JPEG").write_bytes(b"garbage" * 20)

    with pytest.raises(UserError, match=r"unreadable image .*(truncated|zero)\.JPEG.*--strict"):
        build(tin, strict=True)
    assert not cache_at(tin).exists() and not list((tin / "process").glob(".*.tmp-*"))

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
    leftover = path.parent / f".{path.name}.tmp-12345-deadbeef"
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


def _prepare_command(root, image_size=32):
    return [sys.executable, "-m", "fasttrain.data", "prepare", "--source", "tiny-imagenet", "--root", str(root),
            "--image-size", str(image_size), "--workers", "1"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_prepare_leaves_no_cache_a_later_run_accepts(tin, signum):
    # a FIFO among the images blocks the decoder mid-build, so the kill lands while it is working
    blocker = tin / "train" / "s0003" / "images" / "zzz_blocker.JPEG"
    os.mkfifo(blocker)
    proc = subprocess.Popen(_prepare_command(tin), env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    temporary = f".{cache_at(tin).name}.tmp-*"
    try:
        deadline = time.monotonic() + 60
        while not list((tin / "process").glob(f"{temporary}/images_train.npy")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not cache_at(tin).exists()
    if signum == signal.SIGTERM:
        assert not list((tin / "process").glob(temporary))  # cleaned up on the way out
    with pytest.raises(CacheError):
        open_cache(cache_at(tin))
    blocker.unlink()
    open_cache(build(tin), verify=True)
    assert not list((tin / "process").glob(temporary))


def test_two_processes_preparing_at_once(tin):
    procs = [subprocess.Popen(_prepare_command(tin), env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("built cache") == 1 and stderr.count("up to date") == 1, stderr
    assert all(out.strip() == str(cache_at(tin)) for out, _ in outputs)
    cache = open_cache(cache_at(tin), verify=True)
    assert json.loads((cache_at(tin) / "meta.json").read_text())["build"]["images"] == 52
    assert cache.count("train") == 32


def test_preparing_another_size_does_not_wait_for_this_sizes_lock(tin):
    """The lock is per cache: while one process holds the 32 px cache's lock, a 48 px prepare runs to the end,
    and two sizes prepared at once both build."""
    with exclusive_lock(cache_at(tin)):
        other = subprocess.run(_prepare_command(tin, 48), env=ENV, cwd=REPO, capture_output=True, text=True,
                               timeout=120)
    assert other.returncode == 0 and other.stdout.strip() == str(cache_at(tin, 48)), other.stderr
    shutil.rmtree(cache_at(tin, 48))
    procs = [subprocess.Popen(_prepare_command(tin, size), env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for size in (32, 48)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert all("built cache" in err for _, err in outputs)
    assert [open_cache(cache_at(tin, size), verify=True).image_size for size in (32, 48)] == [32, 48]
