"""Source layouts: Tiny-ImageNet and ImageFolder listing, one class mapping for every split, clear layout errors."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fasttrain.data.cache import open_cache
from fasttrain.data.prepare import prepare_cache
from fasttrain.data.sources import ImageFolderSource, SourceLayoutError, TinyImageNetSource
from fasttrain.data.synthetic import write_synthetic


@pytest.fixture(scope="module")
def pristine_tin(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("tin") / "tree", classes=3, per_class=5, val_per_class=2,
                           size=32, seed=1)


@pytest.fixture
def tin(pristine_tin, tmp_path):
    return shutil.copytree(pristine_tin, tmp_path / "tin")


def _jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".jpg", np.full((24, 24, 3), value, np.uint8))[1].tobytes())


def test_tiny_imagenet_class_order_follows_wnids_and_val_is_the_labelled_test_split(tin):
    wnids = (tin / "wnids.txt").read_text().split()
    (tin / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    listing = TinyImageNetSource(tin).list()
    assert listing.class_ids == list(reversed(wnids))
    assert listing.class_names[0].startswith("synthetic ")
    assert len(listing.train) == 15 and len(listing.test) == 6
    for path, label in listing.train:
        assert Path(path).parts[-3] == listing.class_ids[label]
    annotated = dict(line.split("\t")[:2] for line in (tin / "val" / "val_annotations.txt").read_text().splitlines())
    for path, label in listing.test:
        assert annotated[Path(path).name] == listing.class_ids[label]
    assert not any("test" in Path(path).parts for path, _ in listing.train + listing.test)


def test_one_class_mapping_reaches_the_cache(tin):
    wnids = (tin / "wnids.txt").read_text().split()
    (tin / "wnids.txt").write_text("\n".join([wnids[2], wnids[0], wnids[1]]) + "\n")
    cache = open_cache(prepare_cache("tiny-imagenet", tin, image_size=32, val_ratio=0.2, workers=1))
    assert cache.class_ids == [wnids[2], wnids[0], wnids[1]]
    # synthetic class s0000 is red, s0001 blue, s0002 green-yellow: the label must point at the right colour
    red_label = cache.class_ids.index("s0000")
    for split in cache.splits:
        images, labels = cache.split(split)
        red = images[labels == red_label].astype(float)
        others = images[labels != red_label].astype(float)
        redness = lambda x: (x[..., 0] - x[..., 2]).reshape(len(x), -1).max(axis=1)  # noqa: E731
        assert redness(red).min() > redness(others).max() - 40, split


def test_tiny_imagenet_found_inside_a_parent_folder(tin, tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    shutil.move(tin, parent / "tiny-imagenet-200")
    assert TinyImageNetSource(parent).list().root == parent / "tiny-imagenet-200"


def test_imagefolder_sorted_classes_ignores_other_files_and_prefers_test_over_val(tmp_path):
    root = tmp_path / "folder"
    for name, value in (("zebra", 10), ("ant", 200)):
        for i in range(3):
            _jpeg(root / "train" / name / f"{i}.JPG", value)
        _jpeg(root / "val" / name / "v.jpg", value)
    _jpeg(root / "train" / "ant" / "nested" / "deep.jpeg", 200)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    listing = ImageFolderSource(root).list()
    assert listing.class_ids == ["ant", "zebra"]
    assert len(listing.train) == 7 and listing.test_from == "val" and len(listing.test) == 2
    assert [label for _, label in listing.train] == [0, 0, 0, 0, 1, 1, 1]
    _jpeg(root / "test" / "zebra" / "t.png", 10)
    listing = ImageFolderSource(root).list()
    assert listing.test_from == "test" and [label for _, label in listing.test] == [1]


def test_imagefolder_test_class_missing_from_train_is_an_error(tmp_path):
    root = tmp_path / "folder"
    _jpeg(root / "train" / "cat" / "a.jpg", 1)
    _jpeg(root / "val" / "dog" / "b.jpg", 1)
    with pytest.raises(SourceLayoutError, match=r"dog.*train/dog"):
        ImageFolderSource(root).list()


def test_fingerprint_changes_with_files_and_not_with_a_copy(tin, tmp_path):
    before = TinyImageNetSource(tin).list().fingerprint
    copy = shutil.copytree(tin, tmp_path / "copy", copy_function=shutil.copy)
    assert TinyImageNetSource(copy).list().fingerprint == before
    victim = next((tin / "train").glob("*/images/*.JPEG"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert TinyImageNetSource(tin).list().fingerprint != before
