"""Build (or reuse) the uint8 cache of a source: list, split, decode across cores (worker processes) straight into
.npy files, publish — one cache per set of decode parameters, side by side; and from a [data] section to an opened,
verified cache (synthesized first when asked) and its normalisation."""

from __future__ import annotations

import dataclasses
import json
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
from fasttrain.data.cache import (CACHES_DIRNAME, FORMAT_VERSION, META_NAME, Cache, CacheError, cache_file_names,
                                  cache_name, decode_params, describe_file, describe_params, images_name,
                                  is_replaceable, labels_name, open_cache, params_of, pixel_stats_record, pixel_sums,
                                  publish, read_meta, read_npy_header, remove_leftovers, stats_of_split, temp_dir_for)
from fasttrain.data.decode import DecodeError, decode_file, quiet_opencv
from fasttrain.data.sources import VAL_SOURCES, SourceListing, open_source
from fasttrain.data.splits import stratified_split
from fasttrain.atomic import atomic_write_text, exclusive_lock, fsync_dir, remove_replace_leftovers
from fasttrain.config import DataConfig
from fasttrain.errors import UserError
from fasttrain.schema import Range, coerce

log = logging.getLogger("fasttrain.data")

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


def caches_dir(root: str | os.PathLike) -> Path:
    """`<root>/process/`, the study's convention: the folder holding a data root's caches."""
    return Path(root) / CACHES_DIRNAME


def default_cache_dir(root: str | os.PathLike, params: dict) -> Path:
    """`<root>/process/<size>px-<hash>/`: the cache of `decode_params` for this data root."""
    return caches_dir(root) / cache_name(params)


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

def _decode_rows(task: tuple) -> tuple[str, int, list[tuple[int, str]], tuple]:
    """Decode `paths` into rows start.. of the split's .npy; returns (split, count, [(row, reason) of failures],
    the decoded rows' `pixel_sums`).

    Rows are written with pwrite rather than through a memory map, so the worker's resident memory
    is one task's pixels, not every page of the output it has touched. Failed rows stay zero.
    """
    split, npy_path, data_offset, start, paths, size = task
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    failures = []
    decoded = np.ones(len(paths), dtype=bool)
    for j, path in enumerate(paths):
        try:
            pixels[j] = decode_file(path, size)
        except DecodeError as err:
            failures.append((start + j, str(err)))
            decoded[j] = False
    sums = pixel_sums(pixels[decoded])  # the mean/std prepare records, computed while the pixels are at hand
    view = memoryview(pixels.reshape(-1))
    position = data_offset + start * size * size * 3
    fd = os.open(npy_path, os.O_WRONLY)
    try:
        while view:
            written = os.pwrite(fd, view, position)
            view, position = view[written:], position + written
    finally:
        os.close(fd)
    return split, len(paths), failures, sums


def _create_npy(path: Path, count: int, size: int) -> int:
    """Create a (count, size, size, 3) uint8 .npy of zeros (sparse on disk) and return its data offset."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
    offset = int(array.offset)
    del array
    return offset


def _decode_splits(jobs: list[tuple[str, Path, list[str]]], size: int, workers: int | None,
                   description: str) -> tuple[dict[str, list[tuple[int, str]]], dict[str, list], int]:
    """Decode every (split, npy path, files) job; returns the failed (row, reason) per split, the decoded pixels'
    [values per channel, sums, sums of squares] per split, and the workers used.

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
    sums: dict[str, list] = {split: [0, [0, 0, 0], [0, 0, 0]] for split, _, _ in jobs}
    workers = min(workers, len(tasks))

    def collect(split, done, failed, task_sums):
        failures[split].extend(failed)
        total_sums = sums[split]
        total_sums[0] += task_sums[0]
        total_sums[1] = [a + b for a, b in zip(total_sums[1], task_sums[1])]
        total_sums[2] = [a + b for a, b in zip(total_sums[2], task_sums[2])]
        progress.update(done)

    with tqdm(total=total, unit="img", desc=description, disable=None, file=sys.stderr) as progress:
        if workers <= 1:
            quiet_opencv()
            for result in map(_decode_rows, tasks):
                collect(*result)
        else:
            with pool_context().Pool(workers, initializer=quiet_opencv) as pool:
                for result in pool.imap_unordered(_decode_rows, tasks):
                    collect(*result)
    for failed in failures.values():
        failed.sort()
    return failures, sums, workers


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

def _stale_reason(cache_dir: Path, params: dict, fingerprint: str) -> str | None:
    """None if the cache at `cache_dir` was built with `params` from the same source files, else why it is stale.

    A readable cache of other decode parameters is never stale: it is another cache, so that is a UserError.
    """
    try:
        cache = open_cache(cache_dir)
    except CacheError as err:
        return str(err)
    if cache.params != params:
        raise UserError(f"{cache_dir} holds the cache of {describe_params(cache.params)}, not the {describe_params(params)} "
                        f"asked for; point data.cache_dir (--cache-dir) at another directory, or leave it empty for "
                        f"one cache per size under <root>/{CACHES_DIRNAME}/")
    if cache.meta.get("build_params", {}).get("fingerprint") != fingerprint:
        return "the source files changed"
    return None


def _add_pixel_stats(cache: Cache) -> None:
    """Record the train split's mean/std in the meta.json of a cache written before it held them (atomically)."""
    meta = dict(cache.meta, pixel_stats=stats_of_split(cache.split("train")[0]))
    atomic_write_text(cache.path / META_NAME, json.dumps(meta, indent=1) + "\n")
    log.info("cache %s: recorded the train split's mean/std in its meta.json", cache.path)


_MOVING = ".single-cache-moving"


def move_single_cache(root: str | os.PathLike) -> Path | None:
    """Move a cache of the single-cache layout (files right in `<root>/process/`) into its own
    `<root>/process/<size>px-<hash>/`; return where it went, or None if there was none.

    Runs under the lock that layout's writers took, so an older fasttrain building there is waited for;
    the files move by rename (meta.json last), so a crash midway leaves a state the next call finishes.
    """
    parent = caches_dir(root)
    staging = parent / _MOVING

    def old_files() -> list[Path]:
        if not parent.is_dir():
            return []
        # meta.json last: while it is still in place the next call knows there is a cache to move
        return sorted((p for p in parent.iterdir() if p.is_file() and p.name in cache_file_names()),
                      key=lambda p: p.name == META_NAME)

    if not old_files() and not staging.is_dir():
        return None
    with exclusive_lock(parent):
        remove_replace_leftovers(parent)
        moving = old_files()
        if moving:
            staging.mkdir(exist_ok=True)
            for path in moving:
                os.rename(path, staging / path.name)
            fsync_dir(staging)
            fsync_dir(parent)
        if not staging.is_dir():
            return None
        try:
            target = parent / cache_name(params_of(read_meta(staging)))
        except (CacheError, KeyError, TypeError, ValueError):
            shutil.rmtree(staging)
            log.info("removed an incomplete cache of the single-cache layout from %s", parent)
            return None
        if target.exists():  # that cache was built again meanwhile: keep the newer one
            shutil.rmtree(staging)
        else:
            os.rename(staging, target)
            fsync_dir(parent)
        log.info("moved the cache in %s to %s (one cache per size and decode parameters)", parent, target)
        return target


def _first_skipped_error(skipped: list[dict], root: Path) -> UserError:
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    return UserError(f"unreadable image {root / first['path']}: {first['reason']}{more}; fix or remove it, "
                     f"or drop --strict to skip such files")


# --- the build -------------------------------------------------------------------------------------

def _split_record(listing: SourceListing, params: dict, val_rows: np.ndarray | None) -> dict:
    """meta.json's "split": where each split came from and, for a carved val split, how to reproduce it."""
    record = {"val_source": params["val_source"], "val_from": listing.val_from, "test_from": listing.test_from}
    if val_rows is None:
        return {**record, "method": "the source's own val/ folder is the val split; every train/ image is in train",
                "rows": "each split keeps its files in sorted order, minus skipped files"}
    return {
        **record, "seed": params["seed"], "val_ratio": params["val_ratio"],
        "method": "stratified: per class, shuffle with numpy default_rng([seed, class]) and take "
                  "round(n * val_ratio) for val (at least one image stays in train)",
        "indices_into": "the source's training files in sorted order (class order, then path)",
        "val_indices": [int(i) for i in val_rows],
        "train_indices": "every other source training index",
        "rows": "each split keeps its indices in ascending order, minus skipped files",
    }


def describe_split_sources(listing: SourceListing, params: dict) -> str:
    """Which folder of the source became which split, in words (logged for ImageFolder trees)."""
    if params["val_source"] == "folder":
        parts = ["train/ → train", f"{listing.val_from}/ → val"]
    else:
        parts = [f"train/ → train and val (val_ratio {params['val_ratio']} of each class held out, seed {params['seed']})"]
    parts.append(f"{listing.test_from}/ → test" if listing.test_from else "no test split (no test/ folder)")
    text = f"{listing.kind} {listing.root}: " + ", ".join(parts)
    if params["val_source"] == "carve" and listing.test_from == "val":
        text += ' (set data.val_source = "folder" to keep val/ as the val split)'
    return text


def _build(listing: SourceListing, cache_dir: Path, params: dict, workers: int | None, strict: bool) -> None:
    size = params["image_size"]
    started = time.perf_counter()
    if params["val_source"] == "folder":
        val_rows = None
        members = {"train": list(listing.train), "val": list(listing.val), "test": list(listing.test)}
    else:
        source_labels = np.array([label for _, label in listing.train], dtype=np.int64)
        train_rows, val_rows = stratified_split(source_labels, params["val_ratio"], params["seed"])
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
        failures, sums, workers = _decode_splits(jobs, size, workers, f"decoding {listing.kind}")
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
            "build_params": {"format_version": FORMAT_VERSION, "fingerprint": listing.fingerprint, **params},
            "num_classes": listing.num_classes,
            "class_ids": listing.class_ids,
            "class_names": listing.class_names,
            "image_size": size,
            "pixel_format": "RGB uint8 (N, H, W, 3); files of another size are resized to image_size x image_size "
                            "(area filter when shrinking, bilinear when enlarging), no crop",
            "split": _split_record(listing, params, val_rows),
            "splits": split_records,
            "pixel_stats": pixel_stats_record(*sums["train"], images=split_records["train"]["count"]),
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
                  image_size: int = 64, val_ratio: float = 0.2, seed: int = 0, val_source: str = "carve",
                  workers: int | None = None, strict: bool = False, download: bool = False,
                  rebuild: bool = True) -> Path:
    """Make sure a valid cache of `source` ("tiny-imagenet" | "imagefolder") at `root` exists; return its path.

    Each set of decode parameters (image size, val source, val ratio and seed of a carved val split) has
    its own cache, `<root>/process/<size>px-<hash>/`, so caches of other parameters are never touched.
    An explicit `cache_dir` holds one cache: one of other parameters there is a UserError. Reuses a cache
    built from the same files (no decoding); rebuilds one whose source files changed or that fails its
    checks, or with `rebuild=False` raises UserError. Safe to call from several processes at once: the
    lock is per cache, one builds while the others wait, then reuse it. `workers=None` uses every core
    (one process per 2,000 images at most; small trees decode in this process).
    """
    image_size, val_ratio, seed, workers = _check_params(image_size, val_ratio, seed, workers)
    if val_source not in VAL_SOURCES:
        raise UserError(f"val_source must be one of {', '.join(VAL_SOURCES)}, got {val_source!r}")
    root = Path(root)
    if download:
        if source != "tiny-imagenet":
            raise UserError(f"--download fetches Tiny-ImageNet only; source {source!r} must already be on disk")
        from fasttrain.data.download import ensure_tiny_imagenet

        ensure_tiny_imagenet(root)
    listing = open_source(source, root).list(val_source)
    params = decode_params(listing.kind, image_size, val_ratio, seed, val_source)
    if cache_dir is None:
        move_single_cache(root)
        cache_dir = default_cache_dir(root, params)
    cache_dir = Path(cache_dir)
    if listing.kind == "imagefolder":
        log.info("%s", describe_split_sources(listing, params))

    with exclusive_lock(cache_dir):
        reason = _stale_reason(cache_dir, params, listing.fingerprint) if cache_dir.exists() else "missing"
        if reason is None:
            cache = open_cache(cache_dir)
            if strict and cache.meta.get("skipped"):
                raise _first_skipped_error(cache.meta["skipped"], listing.root)
            if "pixel_stats" not in cache.meta:
                _add_pixel_stats(cache)
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
def source_kind(cfg: DataConfig) -> str:
    """The layout prepare reads: the synthetic set is written in Tiny-ImageNet layout."""
    return "tiny-imagenet" if cfg.source == "synthetic" else cfg.source


def cache_dir_for(cfg: DataConfig) -> Path:
    """The cache a [data] section reads: data.cache_dir, else `<root>/process/<size>px-<hash>/` of its parameters."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return default_cache_dir(cfg.root, decode_params(source_kind(cfg), cfg.image_size, cfg.val_ratio, cfg.split_seed,
                                                     cfg.val_source))


def with_mean_std(cfg: DataConfig, cache: Cache) -> DataConfig:
    """`cfg` with the mean/std to normalise by: those the config sets, else ("from the data", empty) the train
    split's own from the cache. Tiny-ImageNet and the synthetic set already hold the study's values (DataConfig)."""
    if cfg.mean and cfg.std:
        return cfg
    mean, std = cache.mean_std()
    return dataclasses.replace(cfg, mean=cfg.mean or mean, std=cfg.std or std)


def prepare_command(cfg: DataConfig) -> str:
    cmd = f"python -m fasttrain.data prepare --source {source_kind(cfg)} --root {cfg.root} --image-size {cfg.image_size}"
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
        val_source=cfg.val_source,
        workers=cfg.prepare_workers or None,
        download=cfg.download,
    )
    # prepare_cache checks sizes and headers only; the checksums also catch a flipped byte before training uses it.
    try:
        return open_cache(path, verify=True)
    except CacheError as err:
        raise CacheError(f"{err} (delete {path} and rerun: it is rebuilt from {cfg.root})") from None
