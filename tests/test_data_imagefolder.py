"""A user's own ImageFolder tree (real JPEGs): its train split's mean/std normalise training, eval, predict and export;
its val/ folder is kept as the val split when asked, and the log says which folder became which split."""

import json
import logging
import shutil
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fasttrain.config import STUDY_MEAN, STUDY_STD, DataConfig, load_config
from fasttrain.data.cache import open_cache
from fasttrain.data.prepare import cache_dir_for, prepare_cache, with_mean_std
from fasttrain.data.synthetic import render_image
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.errors import UserError
from tiny_runs import QUICKSTART, TINY, epoch_records, run_in_process, tiny_args

CLASSES = ("ant", "bee", "cow", "dog")


def write_tree(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """train/, val/, test/ … of learnable pictures, darker and greener than Tiny-ImageNet's, as real JPEG files."""
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for item in range(per_class):
                rgb, _ = render_image(index, rng, 32)
                tinted = (rgb.astype(np.float32) * np.array([0.35, 0.8, 0.45])).astype(np.uint8)
                assert cv2.imwrite(str(folder / f"{name}_{item}.jpg"), cv2.cvtColor(tinted, cv2.COLOR_RGB2BGR))
    (root / "train" / ".DS_Store").write_bytes(b"\0\0")  # what real folders hold; ignored
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("folder") / "tree", {"train": 40, "val": 6, "test": 5})


@pytest.fixture
def tree(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "tree")


def build(root, **kwargs):
    return prepare_cache("imagefolder", root, **{"image_size": 32, "workers": 1, **kwargs})


# --- item 12: the train split's own mean/std ---------------------------------------------------------------

def test_prepare_records_the_train_splits_own_mean_std(tree, tmp_path):
    cache = open_cache(build(tree), verify=True)
    stats = cache.meta["pixel_stats"]
    train = cache.split("train")[0].astype(np.float64) / 255
    assert stats["split"] == "train" and stats["images"] == cache.count("train") == 128
    assert stats["mean"] == pytest.approx(train.mean(axis=(0, 1, 2)), abs=1e-6)
    assert stats["std"] == pytest.approx(train.std(axis=(0, 1, 2)), abs=1e-6)
    assert abs(stats["mean"][0] - STUDY_MEAN[0]) > 0.1  # this tree is not Tiny-ImageNet
    assert cache.mean_std() == (tuple(stats["mean"]), tuple(stats["std"]))
    two = open_cache(build(tree, cache_dir=tmp_path / "two", workers=2))
    assert two.meta["pixel_stats"] == stats  # exact integer sums: the same whatever the workers


def test_from_the_data_resolves_per_source_and_an_explicit_value_wins(tree):
    cache = open_cache(build(tree))
    mean, std = cache.mean_std()
    folder = DataConfig(source="imagefolder", root=str(tree), image_size=32)
    assert folder.mean == () and with_mean_std(folder, cache).mean == mean and with_mean_std(folder, cache).std == std
    chosen = DataConfig(source="imagefolder", root=str(tree), image_size=32, mean=(0.5, 0.5, 0.5))
    assert with_mean_std(chosen, cache).mean == (0.5, 0.5, 0.5) and with_mean_std(chosen, cache).std == std
    # Tiny-ImageNet and the synthetic set keep the study's values, the ones every recorded loss was trained with
    for source in ("synthetic", "tiny-imagenet"):
        assert DataConfig(source=source).mean == STUDY_MEAN and DataConfig(source=source).std == STUDY_STD
    assert load_config(QUICKSTART).data.mean == STUDY_MEAN


def folder_args(tree: Path, out: Path, *extra: str) -> list[str]:
    return tiny_args(tree, out, "data.source=imagefolder", "train.epochs=1", *extra)


def test_a_run_on_an_imagefolder_tree_is_normalised_by_its_own_mean_std_everywhere(tree, tmp_path):
    out = tmp_path / "run"
    trained = run_in_process(folder_args(tree, out), check=True)
    cfg = load_config(QUICKSTART, [f'data.root="{tree}"', *TINY, "data.source=imagefolder"])
    stats = open_cache(cache_dir_for(cfg.data)).meta["pixel_stats"]
    assert "normalising with the train split's own mean" in trained.stdout
    written = tomllib.loads((out / "config.toml").read_text())["data"]
    assert written["mean"] == [] and written["std"] == []  # the run records "from the data", as asked
    for path in (out / "best_model.pt", ckpt_io.list_checkpoints(out / "checkpoints")[-1]):
        card = ckpt_io.load_trusted(path)["card"]
        assert card["mean"] == stats["mean"] and card["std"] == stats["std"], path
        assert card["cache_dir"] == str(cache_dir_for(cfg.data)) and card["cache_params"]["image_size"] == 32
    # eval of the last checkpoint (the final model) normalises as training did: the run's own val loss, exactly
    evaluated = run_in_process(["eval", "--ckpt", str(ckpt_io.list_checkpoints(out / "checkpoints")[-1]), "--json",
                                "--split", "val"], check=True)
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["loss"] == pytest.approx(epoch_records(out)[-1]["val_loss"], rel=1e-5)

    explicit = tmp_path / "explicit"
    run_in_process(folder_args(tree, explicit, "data.mean=[0.5, 0.5, 0.5]"), check=True)
    card = ckpt_io.load_trusted(explicit / "best_model.pt")["card"]
    assert card["mean"] == [0.5, 0.5, 0.5] and card["std"] == stats["std"]


# --- item 13: which folder becomes which split ---------------------------------------------------------------

def test_val_folder_kept_as_val_split_with_val_source_folder(tree, caplog):
    caplog.set_level(logging.INFO, logger="fasttrain.data")
    carved = open_cache(build(tree))
    assert (carved.count("train"), carved.count("val"), carved.count("test")) == (128, 32, 20)
    assert "train/ → train and val (val_ratio 0.2" in caplog.text and "test/ → test" in caplog.text

    caplog.clear()
    kept = open_cache(build(tree, val_source="folder"))
    assert kept.path != carved.path and kept.path.parent == carved.path.parent  # another cache, side by side
    assert (kept.count("train"), kept.count("val"), kept.count("test")) == (160, 24, 20)
    assert "train/ → train, val/ → val, test/ → test" in caplog.text
    assert kept.meta["split"]["val_source"] == "folder" and kept.meta["split"]["val_from"] == "val"
    val_images, val_labels = kept.split("val")
    assert np.bincount(val_labels).tolist() == [6, 6, 6, 6]
    first = sorted((tree / "val" / "bee").glob("*.jpg"))[0]
    assert np.array_equal(val_images[6], cv2.cvtColor(cv2.imread(str(first)), cv2.COLOR_BGR2RGB))
    assert kept.meta["pixel_stats"]["images"] == 160  # the whole train/ folder is the train split


def test_without_test_folder_val_folder_is_val_and_there_is_no_test_split(tree, caplog):
    shutil.rmtree(tree / "test")
    caplog.set_level(logging.INFO, logger="fasttrain.data")
    carved = open_cache(build(tree))
    assert carved.splits == ("train", "val", "test") and carved.count("test") == 24  # the study's rule, said aloud
    assert "val/ → test" in caplog.text and 'data.val_source = "folder"' in caplog.text
    kept = open_cache(build(tree, val_source="folder"))
    assert kept.splits == ("train", "val") and kept.count("val") == 24
    assert "no test split (no test/ folder)" in caplog.text


def test_val_source_folder_without_val_folder_is_one_line(tree):
    shutil.rmtree(tree / "val")
    with pytest.raises(UserError) as caught:
        build(tree, val_source="folder")
    line = str(caught.value)
    assert "\n" not in line and str(tree / "val") in line and 'val_source "carve"' in line
    assert not list((tree / "process").glob("*/meta.json"))


def test_a_run_keeps_the_users_val_folder_as_val(tree, tmp_path):
    shutil.rmtree(tree / "test")
    out = tmp_path / "run"
    trained = run_in_process(folder_args(tree, out, "data.val_source=folder"), check=True)
    assert "val/ → val" in trained.stdout + trained.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["best_val_top1"] is not None and results.get("test_top1") is None


def test_an_imagefolder_run_resumes_with_the_mean_std_it_was_trained_with(tree, tmp_path):
    """Empty data.mean/std ("from the data") on resume means the checkpoint's values: not a changed config."""
    out = tmp_path / "run"
    args = folder_args(tree, out, "train.max_steps=4")
    run_in_process(args, check=True)
    (out / "results.json").unlink()  # stopped: checkpoints, no results
    resumed = run_in_process(args + ["--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ckpt_io.load_trusted(ckpt_io.list_checkpoints(out / "checkpoints")[-1])["card"]["mean"] == \
        open_cache(cache_dir_for(load_config(QUICKSTART, [f'data.root="{tree}"', *TINY,
                                                          "data.source=imagefolder"]).data)).meta["pixel_stats"]["mean"]
