"""Synthetic data: byte-identical for a seed, idempotent, safe with foreign folders, and learnable by a tiny CNN."""

import hashlib
import time

import numpy as np
import pytest
import torch
from torch import nn

from fasttrain.data.cache import open_cache
from fasttrain.data.prepare import prepare_cache
from fasttrain.data.synthetic import MARKER_NAME, write_synthetic
from fasttrain.errors import UserError

SMALL = {"classes": 3, "per_class": 4, "val_per_class": 2, "size": 32}


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER_NAME):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    first = tree_digest(write_synthetic(tmp_path / "a", seed=3, **SMALL))
    assert first == tree_digest(write_synthetic(tmp_path / "b", seed=3, **SMALL))
    assert first != tree_digest(write_synthetic(tmp_path / "c", seed=4, **SMALL))
    root = tmp_path / "a"
    assert (root / "wnids.txt").read_text().split() == ["s0000", "s0001", "s0002"]
    assert len(list((root / "train" / "s0001" / "images").glob("*.JPEG"))) == 4
    assert len((root / "val" / "val_annotations.txt").read_text().splitlines()) == 6
    assert len(list((root / "val" / "images").glob("*.JPEG"))) == 6
    assert len(list((root / "test" / "images").glob("*.JPEG"))) == 6


def test_worker_processes_write_the_same_bytes(tmp_path):
    shape = {**SMALL, "per_class": 180}  # more than one 500-file chunk, so the pool really splits the work
    serial = tree_digest(write_synthetic(tmp_path / "serial", seed=5, **shape))
    assert serial == tree_digest(write_synthetic(tmp_path / "parallel", seed=5, workers=2, **shape))


def test_existing_tree_is_reused_and_other_parameters_replace_it(tmp_path):
    root = write_synthetic(tmp_path / "s", **SMALL)
    some_file = root / "train" / "s0000" / "images" / "s0000_0.JPEG"
    stamp = some_file.stat().st_mtime_ns
    assert write_synthetic(root, **SMALL) == root
    assert some_file.stat().st_mtime_ns == stamp
    write_synthetic(root, **{**SMALL, "classes": 2})
    assert (root / "wnids.txt").read_text().split() == ["s0000", "s0001"]
    assert not (root / "train" / "s0002").exists()


def test_foreign_directory_is_not_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a synthetic data tree"):
        write_synthetic(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.fixture
def one_torch_thread():
    # on a busy 2-core machine two intra-op threads oversubscribe the cores (5x slower steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_cnn_learns_the_synthetic_data(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    root = write_synthetic(tmp_path / "synthetic", classes=10, per_class=120, val_per_class=20, size=32, seed=0)
    cache = open_cache(prepare_cache("tiny-imagenet", root, image_size=32))

    def tensors(split):
        images, labels = cache.split(split)
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div(255).sub(0.5)
        return x, torch.from_numpy(labels)

    x_train, y_train = tensors("train")
    x_test, y_test = tensors("test")
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    started = time.monotonic()
    epochs = 4  # ~0.5 s each on 2 idle cores; two epochs already pass 0.9 when the data is right
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x_train)).split(64):
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"synthetic: {epochs} epochs in {time.monotonic() - started:.1f} s, test accuracy {accuracy:.3f}")
    assert accuracy > 0.8, f"test accuracy {accuracy:.3f} after {epochs} epochs (chance is 0.1)"


def test_another_image_size_regenerates_the_tree_but_keeps_the_other_sizes_caches(tmp_path, caplog):
    """Issue 20 item 2 on the synthetic set (its files are drawn at the image size): 32 → 48 → 32 px reuses the
    32 px cache, untouched, instead of building it again."""
    import dataclasses
    import logging

    from fasttrain.config import DataConfig
    from fasttrain.data.prepare import build_cache

    cfg = DataConfig(root=str(tmp_path / "s"), image_size=32, synth_classes=3, synth_per_class=4,
                     synth_val_per_class=2, prepare_workers=1)
    first = build_cache(cfg).path
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.iterdir()}
    assert build_cache(dataclasses.replace(cfg, image_size=48)).image_size == 48
    caplog.set_level(logging.INFO, logger="fasttrain.data")
    again = build_cache(cfg)
    assert again.path == first and again.image_size == 32 and "up to date" in caplog.text
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.iterdir()} == stamps
