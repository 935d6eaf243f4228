"""predict on real image files, the model card inside checkpoints, and eval --report, on one tiny trained model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fasttrain.data.cache import open_cache
from fasttrain.engine import checkpoint as ckpt_io
from tiny_runs import run_in_process, tiny_args, tiny_cache_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 classes, 2 epochs (16 steps, ~5 s): test top-1 around 0.9, so there are a few mistakes to report."""
    base = tmp_path_factory.mktemp("predict")
    run = base / "run"
    run_in_process(tiny_args(base / "synthetic", run, "train.epochs=2"), check=True)
    return base, run, ckpt_io.list_checkpoints(run / "checkpoints")[-1]


def cache_of(base: Path):
    return open_cache(tiny_cache_dir(base / "synthetic"))


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def predictions(path: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in map(json.loads, path.read_text().splitlines())}


def test_predict_a_folder_of_jpegs_pngs_and_one_corrupt_file(trained, tmp_path):
    base, run, _ = trained
    images, _ = cache_of(base).split("test")
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i in range(6):
        write_rgb(folder / f"img{i}.jpg", images[i])
        write_rgb(folder / "nested" / f"img{i}.png", images[i])
    # the forms prepare accepts: grey, RGBA and 16-bit files
    assert cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY))
    bgr = cv2.cvtColor(images[1], cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(folder / "rgba.png"), np.dstack([bgr, np.full(bgr.shape[:2], 77, np.uint8)]))
    assert cv2.imwrite(str(folder / "deep16.png"), bgr.astype(np.uint16) * 257)
    (folder / "notes.txt").write_text("not an image, and not named like one: ignored")
    corrupt = folder / "broken.jpg"
    corrupt.write_bytes(cv2.imencode(".jpg", bgr)[1].tobytes()[:300])  # truncated
    out_json, out_csv = tmp_path / "p.jsonl", tmp_path / "p.csv"

    result = run_in_process(["predict", "--ckpt", str(run / "best_model.pt"), str(folder), "--topk", "3",
                             "--json", str(out_json), "--csv", str(out_csv)])

    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and str(corrupt) in result.stderr, result.stderr
    by_name = predictions(out_json)
    assert len(out_json.read_text().splitlines()) == 6 + 6 + 3  # every readable image once, nested ones too
    assert "broken.jpg" not in by_name and "notes.txt" not in by_name
    card = torch.load(run / "best_model.pt", weights_only=True)["card"]
    for record in by_name.values():
        assert len(record["topk"]) == 3
        probs = [hit["probability"] for hit in record["topk"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        for hit in record["topk"]:
            assert hit["class_id"] == card["class_ids"][hit["class_index"]]
            assert hit["class_name"] == card["class_names"][hit["class_index"]]
            assert hit["class_name"].startswith("synthetic ")  # words.txt names, not ids
    # lossless PNG, 16-bit (scaled like prepare) and RGBA (alpha dropped) decode to the same pixels
    assert by_name["deep16.png"]["topk"] == by_name["rgba.png"]["topk"] == by_name["img1.png"]["topk"]
    assert by_name["grey.png"]["topk"][0]["class_index"] in range(4)
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 3 * len(by_name) and {r["rank"] for r in rows} == {"1", "2", "3"}
    assert all(len(line.split(": ", 1)) == 2 for line in result.stdout.strip().splitlines()[-len(by_name):])


def test_predict_top1_on_the_test_images_as_files_equals_eval_top1(trained, tmp_path):
    base, run, ckpt = trained
    images, labels = cache_of(base).split("test")
    folder = tmp_path / "test_images"
    folder.mkdir()
    for i, (image, label) in enumerate(zip(images, labels)):
        write_rgb(folder / f"{i:04d}_label{label}.png", image)
    out = tmp_path / "test.jsonl"

    run_in_process(["predict", "--ckpt", str(ckpt), str(folder), "--json", str(out), "--quiet",
                    "--batch-size", "7"], check=True)
    evaluated = json.loads(run_in_process(["eval", "--ckpt", str(ckpt), "--json"], check=True).stdout.splitlines()[-1])
    report = tmp_path / "report"
    summary = json.loads(run_in_process(["eval", "--ckpt", str(ckpt), "--report", str(report), "--json"],
                                        check=True).stdout.splitlines()[-1])

    records = predictions(out)
    hits = [r["topk"][0]["class_index"] == int(name.split("_label")[1].split(".")[0]) for name, r in records.items()]
    assert len(hits) == len(labels) == evaluated["count"]
    assert sum(hits) / len(hits) == evaluated["top1"] == summary["top1"]
    assert 0.5 < evaluated["top1"] < 1.0, "the tiny model should be good but not perfect, so mistakes exist"


def test_eval_report_files(trained, tmp_path):
    base, run, ckpt = trained
    report = tmp_path / "report"
    result = run_in_process(["eval", "--ckpt", str(run / "best_model.pt"), "--report", str(report)], check=True)
    assert f"report in {report}" in result.stdout
    summary = json.loads((report / "summary.json").read_text())
    per_class = list(csv.DictReader((report / "per_class.csv").open()))
    assert [r["class_id"] for r in per_class] == cache_of(base).class_ids
    assert sum(int(r["images"]) for r in per_class) == summary["count"] == cache_of(base).count("test")
    assert sum(int(r["correct"]) for r in per_class) == round(summary["top1"] * summary["count"])
    pairs = list(csv.DictReader((report / "confused_pairs.csv").open()))
    wrong = summary["count"] - sum(int(r["correct"]) for r in per_class)
    assert sum(int(p["images"]) for p in pairs) == wrong and all(p["true_id"] != p["predicted_id"] for p in pairs)
    assert [int(p["images"]) for p in pairs] == sorted((int(p["images"]) for p in pairs), reverse=True)
    for name in ("confusion.png", "mistakes.png"):
        picture = cv2.imread(str(report / name))
        assert picture is not None and min(picture.shape[:2]) > 200, name
        assert picture.std() > 10, f"{name} is blank"


def test_a_checkpoint_moved_elsewhere_predicts_and_exports_without_run_dir_or_cache(trained, tmp_path):
    base, run, _ = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "model.pt"
    shutil.copy(run / "best_model.pt", moved)
    image = tmp_path / "one.png"
    write_rgb(image, cache_of(base).split("test")[0][3])
    expected = run_in_process(["predict", "--ckpt", str(run / "best_model.pt"), str(image)], check=True).stdout
    hidden_run, hidden_cache = base / "run.hidden", base / "synthetic" / "process.hidden"
    run.rename(hidden_run)
    (base / "synthetic" / "process").rename(hidden_cache)
    try:
        moved_result = run_in_process(["predict", "--ckpt", str(moved), str(image)], check=True)
        exported = run_in_process(["export", "--ckpt", str(moved), "--format", "safetensors",
                                   "--out", str(elsewhere / "model.safetensors")], check=True)
    finally:
        hidden_run.rename(run)
        hidden_cache.rename(base / "synthetic" / "process")
    assert moved_result.stdout.splitlines()[-1] == expected.splitlines()[-1]
    assert "check images carried in model.pt" in exported.stdout


def test_an_old_checkpoint_without_card_names_its_run_dir_and_works_with_it(trained, tmp_path):
    base, run, _ = trained
    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    state = torch.load(old / "best_model.pt", weights_only=True)
    del state["card"]
    torch.save(state, old / "best_model.pt")
    image = tmp_path / "one.png"
    write_rgb(image, cache_of(base).split("test")[0][0])

    refused = run_in_process(["predict", "--ckpt", str(old / "best_model.pt"), str(image)])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"has no model card" in refused.stderr and f"--run-dir {old}" in refused.stderr
    with_run_dir = run_in_process(["predict", "--ckpt", str(old / "best_model.pt"), "--run-dir", str(old), str(image)],
                                  check=True)
    fresh = run_in_process(["predict", "--ckpt", str(run / "best_model.pt"), str(image)], check=True)
    assert with_run_dir.stdout.splitlines()[-1].split(": ", 1)[1] == fresh.stdout.splitlines()[-1].split(": ", 1)[1]


def test_every_checkpoint_carries_a_card_that_loads_weights_only(trained):
    base, run, ckpt = trained
    cache = cache_of(base)
    for path in (ckpt, run / "best_model.pt"):
        card = torch.load(path, map_location="cpu", weights_only=True)["card"]
        assert card["model"] == "resnet18" and card["knobs"]["width"] == 0.125 and card["knobs"]["layers"] == [1, 1, 1, 1]
        assert card["class_ids"] == cache.class_ids and card["class_names"] == cache.class_names
        assert card["image_size"] == 32 and card["num_classes"] == 4 and len(card["mean"]) == len(card["std"]) == 3
        assert card["check_images"].dtype == torch.uint8 and tuple(card["check_images"].shape[1:]) == (32, 32, 3)


def test_predict_export_and_report_refuse_a_checkpoint_carrying_a_pickled_object(trained, tmp_path, monkeypatch):
    from test_security import plant_malicious_checkpoint

    base, run, ckpt = trained
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    plant_malicious_checkpoint(evil, ckpt, marker)
    image = tmp_path / "one.png"
    write_rgb(image, cache_of(base).split("test")[0][0])
    flags = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: flags.append(k.get("weights_only")) or real_load(*a, **k))
    for args in (["predict", "--ckpt", str(evil), str(image)],
                 ["export", "--ckpt", str(evil), "--format", "safetensors", "--out", str(tmp_path / "x.safetensors")],
                 ["eval", "--ckpt", str(evil), "--report", str(tmp_path / "report")]):
        refused = run_in_process(args)
        assert refused.returncode == 2 and "holds pickled Python objects" in refused.stderr, refused
    assert flags and all(flag is True for flag in flags) and not marker.exists()
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "report").exists()


@pytest.mark.gpu
def test_predict_on_the_gpu_gives_the_cpu_classes(trained, tmp_path):
    base, run, _ = trained
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(cache_of(base).split("test")[0][:12]):
        write_rgb(folder / f"{i:02d}.png", image)
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.jsonl"
        run_in_process(["predict", "--ckpt", str(run / "best_model.pt"), str(folder), "--device", device,
                        "--json", str(out), "--quiet"], check=True)
        results[device] = predictions(out)
    for name, record in results["cpu"].items():
        gpu = results["cuda"][name]["topk"]
        assert gpu[0]["class_index"] == record["topk"][0]["class_index"]
        assert abs(gpu[0]["probability"] - record["topk"][0]["probability"]) < 1e-3


def test_an_imagefolder_card_names_classes_by_their_folders(tmp_path):
    from fasttrain.config import load_config
    from fasttrain.data.prepare import prepare_cache
    from fasttrain.inference.loaded import build_card

    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 2)):
        for name in ("tabby cat", "dogs"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(count):
                write_rgb(tmp_path / "tree" / split / name / f"{i}.png", rng.integers(0, 256, (20, 24, 3), np.uint8))
    cfg = load_config(None, ["data.source=imagefolder", f'data.root="{tmp_path / "tree"}"', "data.image_size=16",
                             "model.name=resnet18", "model.width=0.125"])
    cache = open_cache(prepare_cache("imagefolder", tmp_path / "tree", cache_dir=tmp_path / "cache", image_size=16,
                                     val_ratio=0.2, seed=0, workers=1))
    card = build_card(cfg, cache)
    assert card["class_ids"] == card["class_names"] == ["dogs", "tabby cat"]
    assert card["image_size"] == 16 and card["knobs"] == {"width": 0.125}
    assert len(card["check_images"]) == cache.count("val") and card["check_images"].shape[1:] == (16, 16, 3)


def test_best_model_rewritten_on_resume_keeps_the_card(trained, tmp_path):
    """A kill between the epoch checkpoint and best_model.pt: resume writes best_model.pt from the checkpoint."""
    base, run, ckpt = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["best_epoch"] = state["epoch"]
    best = tmp_path / "best_model.pt"
    ckpt_io.restore_best(state, best, steps_per_epoch=state["step"] // state["epoch"], write=True)
    image = tmp_path / "one.png"
    write_rgb(image, cache_of(base).split("test")[0][0])
    from_best = run_in_process(["predict", "--ckpt", str(best), str(image)], check=True)
    from_ckpt = run_in_process(["predict", "--ckpt", str(ckpt), str(image)], check=True)
    assert from_best.stdout.splitlines()[-1] == from_ckpt.stdout.splitlines()[-1]
