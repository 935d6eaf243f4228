"""A table of bad inputs: each costs a second, prints one clear line, exits 2, and overwrites nothing.

Each row is (command, expected exit status, fragment of the one line it must print). Rows that fail
in config or CLI parsing run as real `python -m fasttrain` processes (no torch import, about a
second each); rows that need torch run the same `main` in this process. Before and after every row
the shared cache, a finished run and an unfinished run are snapshotted (mtime, size, sha256 of
every file): a bad input never writes there, and a new --out is left absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from fasttrain.data.cache import file_sha256, open_cache
from fasttrain.engine import checkpoint as ckpt_io
from fasttrain.rundir import RunDir
from tiny_runs import ROOT, run_cli, run_in_process, snapshot, subprocess_env, tiny_args, tiny_cache_dir


@dataclass
class Setup:
    """What the rows point at: a prepared data root, a finished and an unfinished run, scratch space."""

    data: Path
    finished: Path
    unfinished: Path
    scratch: Path
    out: Path = field(default=None)

    def checkpoint(self) -> Path:
        return ckpt_io.list_checkpoints(RunDir(self.unfinished).checkpoints)[-1]

    def toml(self, text: str | bytes, name: str = "bad.toml") -> str:
        path = self.scratch / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def source_copy(self, edit: Callable[[Path], None]) -> Path:
        """A copy of the synthetic Tiny-ImageNet tree (without its cache), changed by `edit`."""
        root = self.scratch / "data"
        shutil.copytree(self.data, root, ignore=shutil.ignore_patterns("process", ".process*"))
        edit(root)
        return root

    def cache_copy(self, edit: Callable[[Path], None]) -> Path:
        """A copy of the tree with its cache, the cache changed by `edit` (as if made by hand)."""
        root = self.scratch / "data"
        shutil.copytree(self.data, root)
        edit(tiny_cache_dir(root))
        return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    base = tmp_path_factory.mktemp("bad_inputs")
    data = base / "synthetic"
    finished, unfinished = base / "finished", base / "unfinished"
    run_in_process(tiny_args(data, finished, "train.epochs=1", "train.max_steps=2"), check=True)
    run_in_process(tiny_args(data, unfinished, "train.epochs=1", "train.max_steps=2"), check=True)
    RunDir(unfinished).results.unlink()  # stopped: checkpoints, no results
    return Setup(data=data, finished=finished, unfinished=unfinished, scratch=base)


# --- edits for the rows that need a damaged tree or cache ---------------------------------------------

def first_class_dir(root: Path) -> Path:
    return sorted((root / "tiny-imagenet-200" / "train").iterdir())[0] if (root / "tiny-imagenet-200").exists() \
        else sorted((root / "train").iterdir())[0]


def corrupt_two_images(root: Path) -> None:
    images = sorted(first_class_dir(root).rglob("*.JPEG"))
    images[0].write_bytes(b"not a jpeg at all")
    images[1].write_bytes(images[1].read_bytes()[:40])  # truncated


def empty_first_class(root: Path) -> None:
    for image in first_class_dir(root).rglob("*.JPEG"):
        image.unlink()


def remove_wnids(root: Path) -> None:
    next(root.rglob("wnids.txt")).unlink()


def remove_val_folder(root: Path) -> None:
    shutil.rmtree(root / "val")


def rewrite_meta(cache_dir: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((cache_dir / "meta.json").read_text())
    change(meta)
    (cache_dir / "meta.json").write_text(json.dumps(meta))


def meta_says_48_pixels(cache_dir: Path) -> None:
    rewrite_meta(cache_dir, lambda meta: meta.update(image_size=48))


def label_out_of_range(cache_dir: Path) -> None:
    labels_path = cache_dir / "labels_train.npy"
    labels = np.load(labels_path)
    labels[5] = 7  # 4 classes
    np.save(labels_path, labels)

    def record(meta):
        meta["splits"]["train"]["labels"].update(sha256=file_sha256(labels_path), bytes=labels_path.stat().st_size)
    rewrite_meta(cache_dir, record)


def hide_dali(monkeypatch) -> None:
    """DALI as if not installed: importing it fails."""
    for name in [m for m in sys.modules if m == "nvidia.dali" or m.startswith("nvidia.dali.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)


def an_image(s: Setup) -> Path:
    return next((s.data / "train").rglob("*.JPEG"))


def empty_folder(s: Setup) -> Path:
    (s.scratch / "empty" / "sub").mkdir(parents=True)
    (s.scratch / "empty" / "readme.txt").write_text("no images here")
    return s.scratch / "empty"


# --- the table ------------------------------------------------------------------------------------------

@dataclass
class Row:
    args: Callable[[Setup], list[str]]
    status: int
    fragment: str | Callable[[Setup], str]
    process: str = "cli"  # "cli": a real `python -m fasttrain` process; "in": main() in this process
    prepare: Callable | None = None  # (monkeypatch) → None, before the command


def fresh(s: Setup, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    """A tiny run on the shared data into a new --out, with more --set items."""
    return tiny_args(s.data, s.out, "train.epochs=1", "train.max_steps=1", *sets) + list(extra)


def cfg(s: Setup, path: str, *more: str) -> list[str]:
    return ["--cfg", path, "--out", str(s.out), *more]


ROWS = {
    # config file and command line: no torch import
    "toml-syntax-error-with-line": Row(lambda s: cfg(s, s.toml("[train]\nepochs = 3\nbatch_size = = 4\n")), 2,
                                       "TOML syntax error: Invalid value (at line 3"),
    "unknown-section": Row(lambda s: cfg(s, s.toml("[trian]\nepochs = 1\n")), 2,
                           "unknown section [trian]; did you mean 'train'?"),
    "unknown-key-nearest-match": Row(lambda s: cfg(s, s.toml("[train]\nepoch = 3\n")), 2,
                                     "unknown key 'epoch' in [train]; did you mean 'epochs'?"),
    "wrong-type": Row(lambda s: cfg(s, s.toml('[train]\nepochs = "three"\n')), 2,
                      "[train] epochs must be an integer >= 1, got str 'three'"),
    "section-given-a-value": Row(lambda s: cfg(s, s.toml("train = 3\n")), 2, "'train' must be a section"),
    "choice-typo": Row(lambda s: fresh(s, "train.amp=bf61"), 2, "did you mean 'bf16'?"),
    "negative-lr": Row(lambda s: fresh(s, "optim.lr=-0.1"), 2, "[optim] lr must be a number > 0, got -0.1"),
    "batch-0": Row(lambda s: fresh(s, "train.batch_size=0"), 2, "[train] batch_size must be an integer >= 1, got 0"),
    "val-ratio-1": Row(lambda s: fresh(s, "data.val_ratio=1.0"), 2, "[data] val_ratio must be a number in (0, 1), got 1.0"),
    "grad-accum-not-dividing-batch": Row(lambda s: fresh(s, "train.grad_accum=3"), 2,
                                         "grad_accum (3) must divide train.batch_size (16)"),
    "huge-toml": Row(lambda s: cfg(s, s.toml("#" + "x" * (1 << 20) + "\n")), 2, "over the 1048576-byte limit"),
    "deeply-nested-toml": Row(lambda s: cfg(s, s.toml("[train]\nepochs = " + "[" * 5000 + "]" * 5000 + "\n")), 2,
                              "nested too deeply"),
    "deeply-nested-set-value": Row(lambda s: fresh(s, "train.epochs=" + "[" * 5000 + "]" * 5000), 2,
                                   "is not a TOML literal"),
    "not-utf8-toml": Row(lambda s: cfg(s, s.toml(b"[train]\nepochs = \xff\xfe\n")), 2, "not a UTF-8 text file"),
    "missing-config-file": Row(lambda s: cfg(s, str(s.scratch / "nowhere.toml")), 2, "config file not found"),
    "set-malformed-value": Row(lambda s: fresh(s, "train.epochs=[1,"), 2, "is not a TOML literal"),
    "set-without-section": Row(lambda s: fresh(s, "epochs=3"), 2, "must look like section.key=value"),
    "unknown-cli-flag": Row(lambda s: fresh(s, extra=("--epochs", "3")), 2, "unrecognized argument '--epochs'"),

    # model, data and run directory: torch is imported, so main() runs in this process
    "unknown-model": Row(lambda s: fresh(s, "model.name=resnet19"), 2, "unknown model 'resnet19'", "in"),
    "unknown-model-knob": Row(lambda s: fresh(s, "model.cardinality=8"), 2, "has no knob 'cardinality'", "in"),
    "bad-knob-value": Row(lambda s: fresh(s, "model.width=-1.0"), 2, "model 'resnet18'", "in"),
    "missing-data-root": Row(lambda s: fresh(s, "data.source=imagefolder", f'data.root="{s.scratch / "nowhere"}"'),
                             2, "does not exist", "in"),
    "data-root-not-a-data-set": Row(lambda s: fresh(s, "data.source=tiny-imagenet", f'data.root="{s.scratch}"'),
                                    2, "is not a Tiny-ImageNet tree", "in"),
    "missing-wnids": Row(lambda s: fresh(s, "data.source=tiny-imagenet",
                                         f'data.root="{s.source_copy(remove_wnids)}"'), 2, "wnids.txt", "in"),
    "empty-class-folder": Row(lambda s: fresh(s, "data.source=tiny-imagenet",
                                              f'data.root="{s.source_copy(empty_first_class)}"'), 2,
                              "empty class folder", "in"),
    "corrupt-images-skipped-and-counted": Row(lambda s: fresh(s, "data.source=tiny-imagenet",
                                                              f'data.root="{s.source_copy(corrupt_two_images)}"'),
                                              0, "skipped 2 unreadable images", "in"),
    "cache-image-size-mismatch-rebuilt": Row(lambda s: fresh(s, "data.source=tiny-imagenet",
                                                             f'data.root="{s.cache_copy(meta_says_48_pixels)}"'),
                                             0, "images_train.npy holds uint8", "in"),
    "cache-label-out-of-range-rebuilt": Row(lambda s: fresh(s, "data.source=tiny-imagenet",
                                                            f'data.root="{s.cache_copy(label_out_of_range)}"'),
                                            0, "labels_train.npy has labels outside [0, 4)", "in"),
    "missing-checkpoint-for-resume": Row(lambda s: fresh(s, extra=("--resume", str(s.scratch / "no.pt"))), 2,
                                         "checkpoint not found", "in"),
    "checkpoint-of-another-model": Row(lambda s: fresh(s, "model.name=resnet34",
                                                       extra=("--resume", str(s.checkpoint()))), 2,
                                       "with a changed config: model.name 'resnet18' → 'resnet34';",
                                       "in"),
    "resume-auto-with-changed-knobs": Row(lambda s: tiny_args(s.data, s.unfinished, "train.epochs=1",
                                                              "model.width=0.25") + ["--resume", "auto"], 2,
                                          "with a changed config: model.width 0.125 → 0.25;", "in"),
    "finished-run-dir": Row(lambda s: tiny_args(s.data, s.finished, "train.epochs=1"), 2,
                            "already holds a finished run", "in"),
    "finished-run-dir-resume-auto-does-nothing": Row(lambda s: tiny_args(s.data, s.finished, "train.epochs=1")
                                                     + ["--resume", "auto"], 0, "nothing to do", "in"),
    "unfinished-run-dir-without-resume": Row(lambda s: tiny_args(s.data, s.unfinished, "train.epochs=1"), 2,
                                             "holds an unfinished run", "in"),
    "cuda-without-cuda": Row(lambda s: fresh(s, "train.device=cuda"), 2, "no CUDA device is available", "in"),
    "dali-not-installed": Row(lambda s: fresh(s, "data.backend=dali"), 2, "DALI requested but not installed", "in",
                              prepare=hide_dali),
    # strong augmentation, schedules and evaluation (issue 12)
    "randaugment-magnitude-31": Row(lambda s: fresh(s, "data.augment=randaugment", "data.backend=reference",
                                                   "data.randaugment_m=31"), 2, "[data] randaugment_m must be a magnitude bin 0..30", "in"),
    "randaugment-n-0": Row(lambda s: fresh(s, "data.randaugment_n=0"), 2, "[data] randaugment_n must be 1..14", "in"),
    "policy-on-torch-backend": Row(lambda s: fresh(s, "data.augment=trivialaugment"), 2,
                                   'runs in the dali and reference backends only, not torch; set data.backend = "dali"', "in"),
    "augment-typo": Row(lambda s: fresh(s, "data.augment=randaugmnet"), 2, "did you mean 'randaugment'?", "in"),
    "erasing-above-1": Row(lambda s: fresh(s, "data.erasing=1.5"), 2, "[data] erasing must be a probability in [0, 1]", "in"),
    "progressive-size-not-a-multiple": Row(lambda s: fresh(s, "data.progressive_start_size=20", "data.progressive_end_epoch=1"),
                                           2, "progressive_start_size (20) must be a multiple of data.progressive_step (8)", "in"),
    "progressive-not-below-image-size": Row(lambda s: fresh(s, "data.progressive_start_size=32", "data.progressive_end_epoch=1"),
                                            2, "must be 0 (off) or 8 <= size < data.image_size (32)", "in"),
    "progressive-end-past-epochs": Row(lambda s: fresh(s, "data.progressive_start_size=16", "data.progressive_end_epoch=5"),
                                       2, "[data] progressive_end_epoch must be after", "in"),
    "progressive-on-t2t": Row(lambda s: cfg(s, s.toml('[model]\nname = "t2t_vit_t_14"\n[train]\nepochs = 2\n'
                                                     "[data]\nprogressive_start_size = 16\nprogressive_end_epoch = 1\n")),
                              2, "a T2T-ViT has a fixed token grid", "in"),
    "sched-name-typo": Row(lambda s: fresh(s, "sched.name=liner"), 2, "did you mean 'linear'?", "in"),
    "tta-typo": Row(lambda s: fresh(s, "eval.tta=flp"), 2, "did you mean 'flip'?", "in"),
    "eval-tta-unknown": Row(lambda s: ["eval", "--ckpt", str(s.checkpoint()), "--tta", "flop"], 2,
                            "argument --tta: invalid choice: 'flop'", "in"),
    "eval-missing-checkpoint": Row(lambda s: ["eval", "--ckpt", str(s.scratch / "no.pt")], 2,
                                   "checkpoint not found", "in"),
    "predict-missing-checkpoint": Row(lambda s: ["predict", "--ckpt", str(s.scratch / "no.pt"), str(an_image(s))], 2,
                                      "checkpoint not found", "in"),
    "predict-not-a-checkpoint": Row(lambda s: ["predict", "--ckpt", s.toml("just text\n", "model.pt"), str(an_image(s))],
                                    2, "is not a fasttrain checkpoint", "in"),
    "predict-empty-folder": Row(lambda s: ["predict", "--ckpt", str(s.checkpoint()), str(empty_folder(s))], 2,
                                "holds no image files", "in"),
    "predict-cuda-without-cuda": Row(lambda s: ["predict", "--ckpt", str(s.checkpoint()), str(an_image(s)),
                                                "--device", "cuda"], 2, "--device cuda but no CUDA device", "in"),
    "predict-topk-0": Row(lambda s: ["predict", "--ckpt", str(s.checkpoint()), str(an_image(s)), "--topk", "0"], 2,
                          "--topk must be at least 1", "in"),
    "export-unknown-format": Row(lambda s: ["export", "--ckpt", str(s.checkpoint()), "--format", "onx",
                                            "--out", str(s.out)], 2, "unknown export format 'onx'; did you mean 'onnx'?",
                                 "in"),
    "export-onnx-without-the-extra": Row(lambda s: ["export", "--ckpt", str(s.checkpoint()), "--format", "onnx",
                                                    "--out", str(s.out)], 2,
                                         "needs the optional package onnxscript: pip install 'fasttrain[export]'", "in",
                                         prepare=lambda monkeypatch: monkeypatch.setitem(sys.modules, "onnxscript", None)),
    "eval-batch-0": Row(lambda s: ["eval", "--ckpt", str(s.checkpoint()), "--batch-size", "0"], 2,
                        "--batch-size must be at least 1", "in"),
    "eval-data-not-a-cache": Row(lambda s: ["eval", "--ckpt", str(s.checkpoint()), "--data", str(s.scratch / "moved")],
                                 2, "no cache at", "in"),
    # run directories in use, resumes with another config, mistyped commands (issue 20)
    "unknown-command": Row(lambda s: ["predcit", "--ckpt", str(s.scratch / "x.pt")], 2,
                           "unknown command 'predcit'; did you mean 'predict'?"),
    "run-dir-in-use": Row(lambda s: held_by_another_process(s, fresh(s)), 2, "is in use by another training (pid ",
                          "in"),
    "resume-with-changed-lr": Row(lambda s: tiny_args(s.data, s.unfinished, "train.epochs=1", "optim.lr=0.5")
                                  + ["--resume", "auto"], 2, "with a changed config: optim.lr 0.05 → 0.5;", "in"),
    "resume-extending-a-cosine-run": Row(lambda s: tiny_args(s.data, s.unfinished, "train.epochs=4")
                                         + ["--resume", "auto"], 2,
                                         "train.epochs 1 → 4 (under sched.name = 'cosine' the lr of every step", "in"),
    # caches per size, mean/std from the data, val_source (issue 20 items 2, 12, 13)
    "val-source-folder-on-tiny-imagenet-layout": Row(lambda s: fresh(s, "data.val_source=folder"), 2,
                                                     '[data] val_source "folder" is for ImageFolder trees'),
    "mean-of-two-values": Row(lambda s: fresh(s, "data.mean=[0.5, 0.5]"), 2,
                              "[data] mean must be a list of 3 numbers (R, G, B) or empty (from the data)"),
    "explicit-cache-dir-of-another-size": Row(lambda s: fresh(s, "data.source=tiny-imagenet", "data.image_size=48",
                                                              f'data.cache_dir="{tiny_cache_dir(s.data)}"'), 2,
                                              "holds the cache of 32px tiny-imagenet", "in"),
    "imagefolder-val-source-folder-without-val": Row(lambda s: fresh(s, "data.source=imagefolder",
                                                                     f'data.root="{s.source_copy(remove_val_folder)}"',
                                                                     "data.val_source=folder"), 2,
                                                     'val_source "folder" needs', "in"),
}


HOLD_LOCK = """
import sys, time
from fasttrain.atomic import exclusive_lock_or_fail
with exclusive_lock_or_fail(sys.argv[1], {"pid": 1, "host": "elsewhere", "since": "2026-01-01 00:00:00 UTC"}):
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes the pipe (or ends)
"""
LOCK_HOLDERS: list[subprocess.Popen] = []


def held_by_another_process(s: Setup, args: list[str]) -> list[str]:
    """`args`, with s.out's run-directory lock held by another (real) process until the row's test ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(s.out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    LOCK_HOLDERS.append(holder)
    assert holder.stdout.readline().strip() == "holding"
    return args


@pytest.fixture(autouse=True)
def release_lock_holders():
    yield
    while LOCK_HOLDERS:
        holder = LOCK_HOLDERS.pop()
        holder.stdin.close()
        holder.wait(timeout=30)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input(setup, tmp_path, monkeypatch, name):
    row = ROWS[name]
    if name in ("cuda-without-cuda", "predict-cuda-without-cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    setup.scratch, setup.out = tmp_path, tmp_path / "run"
    args = row.args(setup)
    watched = (setup.data / "process", setup.finished, setup.unfinished)
    before = snapshot(*watched)
    if row.prepare is not None:
        row.prepare(monkeypatch)
    result = run_cli(args, check=False, timeout=300) if row.process == "cli" else run_in_process(args)

    assert result.returncode == row.status, (name, result.stdout[-2000:], result.stderr[-2000:])
    if row.status == 2:
        assert row.fragment in one_error_line(result.stderr)
        assert not setup.out.exists(), f"a refused command left {sorted(setup.out.rglob('*'))}"
    else:
        assert row.fragment in result.stdout + result.stderr, (result.stdout, result.stderr)
    assert snapshot(*watched) == before, "a bad input changed the shared cache or a run directory"


def test_the_table_covers_at_least_25_bad_inputs():
    assert len(ROWS) >= 25


def test_corrupt_images_are_skipped_counted_and_named(setup, tmp_path):
    setup.scratch = tmp_path
    root = setup.source_copy(corrupt_two_images)
    out = tmp_path / "run"
    result = run_in_process(tiny_args(root, out, "train.epochs=1", "train.max_steps=1", "data.source=tiny-imagenet"),
                            check=True)
    cache = open_cache(tiny_cache_dir(root), verify=True)
    assert len(cache.meta["skipped"]) == 2
    assert all(entry["path"].endswith(".JPEG") for entry in cache.meta["skipped"])
    assert cache.count("train") + cache.count("val") == 4 * 40 - 2
    warning = [line for line in result.stdout.splitlines() if "skipped 2 unreadable images" in line]
    assert len(warning) == 1 and cache.meta["skipped"][0]["path"] in warning[0]


@pytest.mark.parametrize("damage, named_file", [(meta_says_48_pixels, "images_train.npy"),
                                                (label_out_of_range, "labels_train.npy")])
def test_a_hand_made_cache_that_fails_its_checks_is_named_and_rebuilt(setup, tmp_path, damage, named_file):
    setup.scratch = tmp_path
    root = setup.cache_copy(damage)
    result = run_in_process(tiny_args(root, tmp_path / "run", "train.epochs=1", "train.max_steps=1",
                                      "data.source=tiny-imagenet"), check=True)
    stale = [line for line in result.stdout.splitlines() if "is stale" in line]
    assert len(stale) == 1 and str(tiny_cache_dir(root) / named_file) in stale[0]
    rebuilt = open_cache(tiny_cache_dir(root), verify=True)
    assert rebuilt.image_size == 32 and int(np.load(tiny_cache_dir(root) / "labels_train.npy").max()) < 4


def test_non_finite_loss_stops_before_saving_the_diverged_model(setup, tmp_path):
    out = tmp_path / "run"
    result = run_in_process(tiny_args(setup.data, out, "train.epochs=1", "optim.lr=1e30", "ckpt.every_steps=1",
                                      "ckpt.keep=10"))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "loss became non-finite" in line and "last good checkpoint:" in line and "--resume auto" in line
    bad_step = int(line.split("by step ")[1].split(" ")[0])
    saved = [int(p.stem.split("_s")[1]) for p in ckpt_io.list_checkpoints(RunDir(out).checkpoints)]
    assert saved == list(range(1, bad_step)), (saved, bad_step)  # nothing saved from the diverged step on
    assert str(ckpt_io.list_checkpoints(RunDir(out).checkpoints)[-1]) in line
    assert not RunDir(out).results.exists()


@pytest.mark.slow
@pytest.mark.dist
def test_batch_not_divisible_by_world_size_under_torchrun(setup, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fasttrain", *tiny_args(setup.data, out, "train.epochs=1", "train.batch_size=15")],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0  # torchrun's own status: a worker failed
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("batch_size 15 is not divisible by the world size 2; use a multiple of 2" in e for e in errors)
    assert "exitcode  : 2" in proc.stderr  # a worker exited with the user-error status
    assert "fasttrain/" not in proc.stderr, proc.stderr[-3000:]  # no worker traceback (torchrun prints its own)
    assert not RunDir(out).checkpoints.exists() and not RunDir(out).results.exists()
