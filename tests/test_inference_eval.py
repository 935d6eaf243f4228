"""eval, eval --report and predict open a model one way (its card) and agree on one real tiny run: the same top-1 on
the test split's own JPEG files, best_model.pt and bundles evaluated on the cache their card names (or --data)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.rundir import RunDir
from tiny_runs import STEPS_PER_EPOCH, run_in_process, tiny_args, tiny_cache_dir


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory):
    """4 classes, 2 epochs, evaluated with flip TTA (what the card records and eval and predict then use)."""
    base = tmp_path_factory.mktemp("eval")
    run = base / "run"
    run_in_process(tiny_args(base / "synthetic", run, "train.epochs=2", "eval.tta=flip"), check=True)
    return base, run, ckpt_io.list_checkpoints(RunDir(run).checkpoints)[-1]


def printed_json(args: list[str]) -> dict:
    return json.loads(run_in_process(args, check=True).stdout.strip().splitlines()[-1])


def test_eval_the_report_and_predict_give_the_same_top1_on_the_test_split(flip_run, tmp_path):
    base, run, ckpt = flip_run
    results = json.loads(RunDir(run).results.read_text())
    evaluated = printed_json(["eval", "--ckpt", str(ckpt), "--json"])
    report = tmp_path / "report"
    reported = printed_json(["eval", "--ckpt", str(ckpt), "--report", str(report), "--json"])
    # the test split is the source's labelled val set: its own JPEG files, which prepare decoded into the cache
    val = base / "synthetic" / "val"
    wnid_of = dict(line.split("\t")[:2] for line in (val / "val_annotations.txt").read_text().splitlines())
    out = tmp_path / "predicted.jsonl"
    run_in_process(["predict", "--ckpt", str(ckpt), str(val / "images"), "--json", str(out), "--quiet",
                    "--batch-size", "16"], check=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    predicted_top1 = sum(r["topk"][0]["class_id"] == wnid_of[Path(r["path"]).name] for r in records) / len(records)

    assert all(Path(r["path"]).suffix == ".JPEG" for r in records)
    assert len(records) == evaluated["count"] == reported["count"] == 40
    assert evaluated["tta"] == reported["tta"] == "flip"  # the run's [eval] tta, from the model card
    assert evaluated["top1"] == reported["top1"] == predicted_top1 == results["test_top1"]
    assert evaluated["top5"] == reported["top5"] == results["test_top5"]
    assert evaluated["loss"] == reported["loss"]
    assert 0.5 < evaluated["top1"] < 1.0, "the tiny model should be good but not perfect, so mistakes exist"
    per_class = list(csv.DictReader((report / "per_class.csv").open()))
    assert sum(int(r["correct"]) for r in per_class) == round(reported["top1"] * reported["count"])
    assert json.loads((report / "summary.json").read_text())["top1"] == evaluated["top1"]

    # without TTA all three still agree with each other
    plain = printed_json(["eval", "--ckpt", str(ckpt), "--tta", "none", "--json"])
    run_in_process(["predict", "--ckpt", str(ckpt), str(val / "images"), "--json", str(out), "--quiet",
                    "--tta", "none"], check=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert plain["tta"] == "none" and plain["loss"] != evaluated["loss"]
    assert plain["top1"] == sum(r["topk"][0]["class_id"] == wnid_of[Path(r["path"]).name] for r in records) / 40


def test_eval_of_best_model_pt_and_of_a_bundle_reads_the_cache_named_in_the_card(flip_run, tmp_path):
    base, run, ckpt = flip_run
    results = json.loads(RunDir(run).results.read_text())
    best = printed_json(["eval", "--ckpt", str(RunDir(run).best_model), "--json"])
    assert best["weights"] == "model" and best["count"] == 40 and best["tta"] == "flip"
    assert best["top1"] == results["best_test_top1"]
    text = run_in_process(["eval", "--ckpt", str(RunDir(run).best_model)], check=True).stdout
    assert f"top-1 {best['top1']:.4f}" in text
    bundle = tmp_path / "model.safetensors"
    run_in_process(["export", "--ckpt", str(ckpt), "--format", "safetensors", "--out", str(bundle)], check=True)
    exported = printed_json(["eval", "--ckpt", str(bundle), "--json"])
    assert exported["top1"] == results["test_top1"] and exported["tta"] == "flip"


def test_eval_of_a_model_whose_cache_moved_names_data_and_works_with_it(flip_run, tmp_path):
    base, run, _ = flip_run
    best = str(RunDir(run).best_model)
    where = tiny_cache_dir(base / "synthetic")  # <root>/process/32px-<hash>/
    expected = printed_json(["eval", "--ckpt", best, "--json"])
    moved = tmp_path / "moved_cache"
    where.rename(moved)
    try:
        refused = run_in_process(["eval", "--ckpt", best])
        with_data = printed_json(["eval", "--ckpt", best, "--data", str(moved), "--json"])
    finally:
        moved.rename(where)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused
    assert f"the data cache {where} named in {best}'s model card is not there; pass --data" in refused.stderr
    assert with_data == expected


def test_eval_refuses_a_cache_of_other_classes_in_one_line(flip_run, tmp_path):
    from fasttrain.data.prepare import prepare_cache
    from fasttrain.data.synthetic import write_synthetic

    base, run, _ = flip_run
    tree = write_synthetic(tmp_path / "other", classes=3, per_class=4, val_per_class=2, size=32, seed=5)
    other = prepare_cache("tiny-imagenet", tree, image_size=32, val_ratio=0.25, seed=0, workers=1)
    refused = run_in_process(["eval", "--ckpt", str(RunDir(run).best_model), "--data", str(other)])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused
    assert f"the cache at {other} holds 3 classes at 32px" in refused.stderr and "trained on 4" in refused.stderr


def test_checkpoints_describe_the_model_by_the_card_alone_and_an_older_layout_still_resumes(flip_run, tmp_path):
    base, run, ckpt = flip_run
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "meta" not in state and state["world_size"] == 1
    assert state["card"]["model"] == "resnet18" and state["card"]["num_classes"] == 4 and state["card"]["tta"] == "flip"
    # a checkpoint written before the card: model name, classes and world size in "meta"
    old_run = tmp_path / "old"
    RunDir(old_run).checkpoints.mkdir(parents=True)
    old = RunDir(old_run).checkpoints / ckpt.name
    card = state.pop("card")
    state["meta"] = {"model": card["model"], "num_classes": card["num_classes"], "world_size": state.pop("world_size"),
                     "config_name": "tiny"}
    torch.save(state, old)
    resumed = run_in_process(tiny_args(base / "synthetic", old_run, "train.epochs=2", "eval.tta=flip")
                             + ["--resume", "auto"], check=True)
    assert f"resume: {old} (epoch 2, step {2 * STEPS_PER_EPOCH})" in resumed.stdout
    assert json.loads(RunDir(old_run).results.read_text())["steps"] == 2 * STEPS_PER_EPOCH
    # and check_fits reads its "meta" as it reads a card: another model is refused in one line
    with pytest.raises(ckpt_io.CheckpointError, match="is for model 'resnet18' with 4 classes, but the config asks"):
        ckpt_io.check_fits(state, model_name="resnet34", num_classes=4, model=torch.nn.Linear(1, 1), path=old)
    shutil.rmtree(old_run)
