"""Build (or reuse) the uint8 cache of a source: list, split, decode across cores (worker processes) straight into
.npy files, publish; and from a [data] section to an opened, verified cache (synthesized first when asked)."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from tqdm import tqdm

import fasttrain
from fasttrain.data.cache import (FORMAT_VERSION, CacheError, describe_file, images_name, is_replaceable,
                                  labels_name, open_cache, publish, read_npy_header, remove_leftovers, temp_dir_for)
from fasttrain.data.decode import DecodeError, decode_file, quiet_opencv
from fasttrain.data.sources import SourceListing, open_source
from fasttrain.data.splits import stratified_split
from fasttrain.atomic import exclusive_lock
from fasttrain.config import DataConfig
from fasttrain.errors import UserError
from fasttrain.schema import Range, coerce

log = logging.getLogger("fasttrain.data")

DEFAULT_CACHE_DIRNAME = "process"
_TASK_BYTES = 4 << 20  # decoded pixels one worker task holds before writing them out
# With workers left to prepare, start one process per this many images at most: starting a worker
# (interpreter, numpy, OpenCV) costs about as much as decoding a thousand small images.
_IMAGES_PER_AUTO_WORKER = 2000


def default_workers() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where available: a fork of a process that already runs threads (torch, a trainer) can
    deadlock, while forkserver starts workers from a clean single-threaded server."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def default_cache_dir(root: str | os.PathLike) -> Path:
    """`<root>/process/`, the study's convention."""
    return Path(root) / DEFAULT_CACHE_DIRNAME


def _check_params(image_size, val_ratio, seed, workers) -> tuple[int, float, int, int | None]:
    """The prepare parameters in plain Python types, each checked against its schema type and Range."""

    def check(value, annotation, name):
        return coerce(value.item() if isinstance(value, np.generic) else value, annotation, name)

    image_size = check(image_size, Annotated[int, Range(8, 1024)], "image_size")
    val_ratio = check(val_ratio, Annotated[float, Range(0.0, 1.0, max_open=True)], "val_ratio")
    seed = check(seed, Annotated[int, Range(0)], "seed")
    if workers is not None:
        workers = check(workers, Annotated[int, Range(1)], "workers (omit it for all cores)")
    return image_size, val_ratio, seed, workers


# --- decoding: each worker writes its rows straight into the split's .npy file ------------------

def _decode_rows(task: tuple) -> tuple[str, int, list[tuple[int, str]]]:
    """Decode `paths` into rows start.. of the split's .npy; returns (split, count, [(row, reason) of failures]).

    Rows are written with pwrite rather than through a memory map, so the worker's resident memory
    is one task's pixels, not every page of the output it has touched. Failed rows stay zero.
    """
    split, npy_path, data_offset, start, paths, size = task
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    failures = []
    for j, path in enumerate(paths):
        try:
            pixels[j] = decode_file(path, size)
        except DecodeError as err:
            failures.append((start + j, str(err)))
    view = memoryview(pixels.reshape(-1))
    position = data_offset + start * size * size * 3
    fd = os.open(npy_path, os.O_WRONLY)
    try:
        while view:
            written = os.pwrite(fd, view, position)
            view, position = view[written:], position + written
    finally:
        os.close(fd)
    return split, len(paths), failures


def _create_npy(path: Path, count: int, size: int) -> int:
    """Create a (count, size, size, 3) uint8 .npy of zeros (sparse on disk) and return its data offset."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
    offset = int(array.offset)
    del array
    return offset


def _decode_splits(jobs: list[tuple[str, Path, list[str]]], size: int, workers: int | None,
                   description: str) -> tuple[dict[str, list[tuple[int, str]]], int]:
    """Decode every (split, npy path, files) job; returns the failed (row, reason) per split and the workers used.

    `workers=None`: every core, but no more than one per _IMAGES_PER_AUTO_WORKER images.
    """
    total = sum(len(files) for _, _, files in jobs)
    if workers is None:
        workers = max(1, min(default_workers(), total // _IMAGES_PER_AUTO_WORKER))
    rows_per_task = max(8, min(_TASK_BYTES // (size * size * 3), math.ceil(total / (workers * 4))))
    tasks = []
    for split, npy_path, files in jobs:
        offset = _create_npy(npy_path, len(files), size)
        for start in range(0, len(files), rows_per_task):
            tasks.append((split, str(npy_path), offset, start, files[start:start + rows_per_task], size))
    failures: dict[str, list[tuple[int, str]]] = {split: [] for split, _, _ in jobs}
    workers = min(workers, len(tasks))
    with tqdm(total=total, unit="img", desc=description, disable=None, file=sys.stderr) as progress:
        if workers <= 1:
            quiet_opencv()
            results = map(_decode_rows, tasks)
            for split, done, failed in results:
                failures[split].extend(failed)
                progress.update(done)
        else:
            with pool_context().Pool(workers, initializer=quiet_opencv) as pool:
                for split, done, failed in pool.imap_unordered(_decode_rows, tasks):
                    failures[split].extend(failed)
                    progress.update(done)
    for failed in failures.values():
        failed.sort()
    return failures, workers


def _drop_rows(npy_path: Path, drop: set[int], size: int) -> None:
    """Rewrite a split's .npy without the rows in `drop`, streaming blocks (never the whole array in memory)."""
    shape, _, offset = read_npy_header(npy_path)
    keep = np.array([row for row in range(shape[0]) if row not in drop], dtype=np.int64)
    row_bytes = size * size * 3
    compacted = npy_path.with_name(npy_path.name + ".compact")
    out_offset = _create_npy(compacted, len(keep), size)
    block = max(1, _TASK_BYTES // row_bytes)
    with open(npy_path, "rb") as src, open(compacted, "r+b") as dst:
        dst.seek(out_offset)
        for first in range(0, shape[0], block):
            count = min(block, shape[0] - first)
            src.seek(offset + first * row_bytes)
            rows = np.frombuffer(src.read(count * row_bytes), dtype=np.uint8).reshape(count, row_bytes)
            wanted = keep[(keep >= first) & (keep < first + count)] - first
            dst.write(rows[wanted].tobytes())
    os.replace(compacted, npy_path)


# --- reuse -------------------------------------------------------------------------------------------

def _build_params(listing: SourceListing, image_size: int, val_ratio: float, seed: int) -> dict:
    return {"format_version": FORMAT_VERSION, "source_kind": listing.kind, "fingerprint": listing.fingerprint,
            "image_size": image_size, "val_ratio": val_ratio, "seed": seed}


def _stale_reason(cache_dir: Path, wanted: dict) -> str | None:
    """None if the cache at `cache_dir` was built from the same source with the same parameters, else why not."""
    try:
        cache = open_cache(cache_dir)
    except CacheError as err:
        return str(err)
    recorded = cache.meta.get("build_params", {})
    for key, value in wanted.items():
        if recorded.get(key) != value:
            what = "the source files changed" if key == "fingerprint" else f"{key} {recorded.get(key)!r} != {value!r}"
            return what
    return None


def _first_skipped_error(skipped: list[dict], root: Path) -> UserError:
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    return UserError(f"unreadable image {root / first['path']}: {first['reason']}{more}; fix or remove it, "
                     f"or drop --strict to skip such files")


# --- the build -------------------------------------------------------------------------------------

def _build(listing: SourceListing, cache_dir: Path, params: dict, workers: int | None, strict: bool) -> None:
    size, val_ratio, seed = params["image_size"], params["val_ratio"], params["seed"]
    started = time.perf_counter()
    source_labels = np.array([label for _, label in listing.train], dtype=np.int64)
    train_rows, val_rows = stratified_split(source_labels, val_ratio, seed)
    selections = {"train": train_rows, "val": val_rows}
    members = {
        "train": [listing.train[i] for i in train_rows],
        "val": [listing.train[i] for i in val_rows],
        "test": list(listing.test),
    }
    tmp = temp_dir_for(cache_dir)
    try:
        jobs = [(split, tmp / images_name(split), [path for path, _ in items])
                for split, items in members.items() if items]
        decode_started = time.perf_counter()
        failures, workers = _decode_splits(jobs, size, workers, f"decoding {listing.kind}")
        decode_seconds = time.perf_counter() - decode_started

        skipped = []
        split_records = {}
        for split, npy_path, _ in jobs:
            failed = dict(failures[split])
            items = members[split]
            for row in sorted(failed):
                skipped.append({"path": listing.relative(items[row][0]), "split": split,
                                "reason": failed[row]})
            if strict and skipped:
                raise _first_skipped_error(skipped, listing.root)
            if failed:
                _drop_rows(npy_path, set(failed), size)
            labels = np.array([label for row, (_, label) in enumerate(items) if row not in failed], dtype=np.int64)
            if split == "train" and labels.size == 0:
                raise UserError(f"no readable training image in {listing.root}; every file failed to decode "
                                f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
            np.save(tmp / labels_name(split), labels)
            split_records[split] = {"count": int(labels.size), "images": describe_file(npy_path),
                                    "labels": describe_file(tmp / labels_name(split))}

        meta = {
            "format_version": FORMAT_VERSION,
            "created_by": f"fasttrain {fasttrain.__version__}",
            "source": {"kind": listing.kind, "root": str(listing.root), "fingerprint": listing.fingerprint,
                       "train_files": len(listing.train), "test_files": len(listing.test),
                       "test_from": listing.test_from},
            "build_params": params,
            "num_classes": listing.num_classes,
            "class_ids": listing.class_ids,
            "class_names": listing.class_names,
            "image_size": size,
            "pixel_format": "RGB uint8 (N, H, W, 3); files of another size are resized to image_size x image_size "
                            "(area filter when shrinking, bilinear when enlarging), no crop",
            "split": {
                "seed": seed, "val_ratio": val_ratio,
                "method": "stratified: per class, shuffle with numpy default_rng([seed, class]) and take "
                          "round(n * val_ratio) for val (at least one image stays in train)",
                "indices_into": "the source's training files in sorted order (class order, then path)",
                "val_indices": [int(i) for i in selections["val"]],
                "train_indices": "every other source training index",
                "rows": "each split keeps its indices in ascending order, minus skipped files",
            },
            "splits": split_records,
            "skipped": skipped,
            "build": {"workers": workers, "decode_seconds": round(decode_seconds, 3),
                      "seconds": round(time.perf_counter() - started, 3),
                      "images": sum(r["count"] for r in split_records.values())},
        }
        publish(tmp, cache_dir, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if skipped:
        first = skipped[0]
        log.warning("warning: skipped %d unreadable image%s (listed under 'skipped' in %s); first: %s (%s)",
                    len(skipped), "" if len(skipped) == 1 else "s", cache_dir / "meta.json", first["path"],
                    first["reason"])
    counts = ", ".join(f"{split} {record['count']}" for split, record in split_records.items())
    log.info("built cache %s: %s images of %dx%d in %.1f s (%d worker%s)", cache_dir, counts, size, size,
             meta["build"]["seconds"], workers, "" if workers == 1 else "s")


def prepare_cache(source: str, root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  image_size: int = 64, val_ratio: float = 0.2, seed: int = 0, workers: int | None = None,
                  strict: bool = False, download: bool = False, rebuild: bool = True) -> Path:
    """Make sure a valid cache of `source` ("tiny-imagenet" | "imagefolder") at `root` exists; return its path.

    Reuses a cache built from the same files with the same parameters (no decoding); rebuilds a
    stale one, or with `rebuild=False` raises UserError. Safe to call from several processes at
    once: one builds under a file lock while the others wait, then reuse it. `workers=None` uses
    every core (one process per 2,000 images at most; small trees decode in this process).
    """
    image_size, val_ratio, seed, workers = _check_params(image_size, val_ratio, seed, workers)
    root = Path(root)
    if download:
        if source != "tiny-imagenet":
            raise UserError(f"--download fetches Tiny-ImageNet only; source {source!r} must already be on disk")
        from fasttrain.data.download import ensure_tiny_imagenet

        ensure_tiny_imagenet(root)
    listing = open_source(source, root).list()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    params = _build_params(listing, image_size, val_ratio, seed)

    with exclusive_lock(cache_dir):
        reason = _stale_reason(cache_dir, params) if cache_dir.exists() else "missing"
        if reason is None:
            meta = open_cache(cache_dir).meta
            if strict and meta.get("skipped"):
                raise _first_skipped_error(meta["skipped"], listing.root)
            log.info("cache %s is up to date (reused, nothing decoded)", cache_dir)
            return cache_dir
        if reason != "missing":
            if not is_replaceable(cache_dir):
                raise UserError(f"{cache_dir} exists and is not a fasttrain cache; pass another --cache-dir "
                                f"or remove it")
            if not rebuild:
                raise UserError(f"cache {cache_dir} is stale ({reason}); rerun without --no-rebuild to rebuild it")
            log.info("cache %s is stale (%s); rebuilding", cache_dir, reason)
        remove_leftovers(cache_dir)
        _build(listing, cache_dir, params, workers, strict)
    return cache_dir


# ---- from a [data] section to an opened cache ----
def cache_dir_for(cfg: DataConfig) -> Path:
    """The cache a [data] section reads: data.cache_dir, else `<root>/process`."""
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(cfg.root)


def prepare_command(cfg: DataConfig) -> str:
    source = "tiny-imagenet" if cfg.source == "synthetic" else cfg.source
    cmd = f"python -m fasttrain.data prepare --source {source} --root {cfg.root} --image-size {cfg.image_size}"
    if cfg.source == "tiny-imagenet":
        cmd += " --download"
    return cmd


def _check_source_present(cfg: DataConfig) -> None:
    root = Path(cfg.root)
    if cfg.source == "synthetic" or root.exists():
        return
    if cfg.source == "tiny-imagenet" and cfg.download:
        return
    if cfg.source == "tiny-imagenet":
        raise UserError(
            f"data root {root} does not exist; download and prepare Tiny-ImageNet with: {prepare_command(cfg)} "
            f"(or set data.download = true)"
        )
    raise UserError(f"data root {root} does not exist; point data.root at an ImageFolder tree with train/<class>/ images")


def build_cache(cfg: DataConfig):
    """Make sure the cache exists and matches the config; return the opened Cache (single process)."""
    _check_source_present(cfg)
    source = cfg.source
    if source == "synthetic":
        from fasttrain.data.synthetic import write_synthetic

        write_synthetic(
            cfg.root,
            classes=cfg.synth_classes,
            per_class=cfg.synth_per_class,
            val_per_class=cfg.synth_val_per_class,
            size=cfg.image_size,
            seed=cfg.split_seed,
        )
        source = "tiny-imagenet"  # the synthetic set is written in Tiny-ImageNet layout
    path = prepare_cache(
        source,
        cfg.root,
        cache_dir=cache_dir_for(cfg),
        image_size=cfg.image_size,
        val_ratio=cfg.val_ratio,
        seed=cfg.split_seed,
        workers=cfg.prepare_workers or None,
        download=cfg.download,
    )
    # prepare_cache checks sizes and headers only; the checksums also catch a flipped byte before training uses it.
    try:
        return open_cache(path, verify=True)
    except CacheError as err:
        raise CacheError(f"{err} (delete {path} and rerun: it is rebuilt from {cfg.root})") from None
