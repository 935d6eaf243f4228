"""The on-disk uint8 cache: per-split images/labels .npy files plus meta.json; one per set of decode parameters;
open, check, verify, publish atomically.

Layout of a cache directory::

    meta.json               format version, source, decode parameters, classes, split record, the train split's
                            per-channel mean/std, per-file shape/size/sha256, skipped files
    images_<split>.npy      uint8 (N, H, W, 3), RGB, readable with np.load(mmap_mode="r")
    labels_<split>.npy      int64 (N,), values in [0, num_classes)

Caches of one data root live side by side in `<root>/process/<size>px-<hash>/`, the hash of their decode
parameters (`decode_params`): another image size, val ratio, split seed or val source is another cache,
never a rebuild of this one.

A cache is built in a hidden temporary sibling directory and renamed into place only after
every file and meta.json (written last) are fsynced, so a directory with the cache's name is
always complete; a leftover temporary directory is never opened.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np

from fasttrain.atomic import file_digest, fsync_dir, remove_replace_leftovers, replace_dir
from fasttrain.errors import UserError

FORMAT_VERSION = 1
META_NAME = "meta.json"
CACHES_DIRNAME = "process"  # <root>/process/, the study's convention, holds a data root's caches
SPLIT_NAMES = ("train", "val", "test")


class CacheError(UserError):
    """A cache that is missing, incomplete, of another format version, truncated or fails its checksums."""


def decode_params(source_kind: str, image_size: int, val_ratio: float, seed: int, val_source: str) -> dict:
    """What decides a cache's content besides the source files; each distinct set has its own cache directory.

    val_ratio and seed only shape a carved val split, so with val_source "folder" they are left out.
    """
    carve = val_source == "carve"
    return {"source_kind": source_kind, "image_size": int(image_size), "val_source": val_source,
            "val_ratio": float(val_ratio) if carve else None, "seed": int(seed) if carve else None}


def cache_name(params: dict) -> str:
    """`<size>px-<8 hex digits of the parameters' hash>`: the directory name of a cache under `<root>/process/`."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return f"{params['image_size']}px-{digest}"


def describe_params(params: dict) -> str:
    """The decode parameters in words, e.g. "32px tiny-imagenet, val carved (val_ratio 0.2, seed 0)"."""
    if params.get("val_source") == "folder":
        val = "val from the val/ folder"
    else:
        val = f"val carved (val_ratio {params.get('val_ratio')}, seed {params.get('seed')})"
    return f"{params.get('image_size')}px {params.get('source_kind')}, {val}"


def params_of(meta: dict) -> dict:
    """The decode parameters a cache's meta.json records (caches from before val_source carved their val split)."""
    built = meta.get("build_params", {})
    return decode_params(built.get("source_kind", meta.get("source", {}).get("kind")),
                         built.get("image_size", meta.get("image_size")), built.get("val_ratio", 0.0),
                         built.get("seed", 0), built.get("val_source", "carve"))


def pixel_sums(pixels: np.ndarray) -> tuple[int, list[int], list[int]]:
    """(values per channel, per-channel sum, per-channel sum of squares) of uint8 (N, H, W, 3) images.

    Exact integers, so the statistics do not depend on how the images were split across workers.
    """
    flat = np.asarray(pixels).reshape(-1, 3)
    sums = flat.sum(axis=0, dtype=np.uint64)
    squares = np.square(flat, dtype=np.uint32).sum(axis=0, dtype=np.uint64)
    return flat.shape[0], [int(x) for x in sums], [int(x) for x in squares]


def pixel_stats_record(count: int, sums: list[int], squares: list[int], images: int) -> dict:
    """meta.json's "pixel_stats": per-channel mean and (population) std of the train split, on the 0..1 scale."""
    if count == 0:
        return {}
    mean = [s / count / 255.0 for s in sums]
    # integer numerator: no cancellation error in E[x^2] - E[x]^2
    std = [math.sqrt(max(sq * count - s * s, 0)) / count / 255.0 for s, sq in zip(sums, squares)]
    return {"split": "train", "images": int(images), "mean": [round(x, 6) for x in mean],
            "std": [round(x, 6) for x in std],
            "method": "per RGB channel over every pixel of the train split's images as cached (uint8 / 255)"}


def stats_of_split(images: np.ndarray, block: int = 1024) -> dict:
    """The pixel_stats record of a cached split, read in blocks (for caches written before meta.json held it)."""
    total, sums, squares = 0, [0, 0, 0], [0, 0, 0]
    for first in range(0, len(images), block):
        n, s, sq = pixel_sums(images[first:first + block])
        total += n
        sums = [a + b for a, b in zip(sums, s)]
        squares = [a + b for a, b in zip(squares, sq)]
    return pixel_stats_record(total, sums, squares, len(images))


def images_name(split: str) -> str:
    return f"images_{split}.npy"


def labels_name(split: str) -> str:
    return f"labels_{split}.npy"


def cache_file_names() -> set[str]:
    """Every file name a cache directory may contain (used to refuse replacing a foreign directory)."""
    return {META_NAME} | {images_name(s) for s in SPLIT_NAMES} | {labels_name(s) for s in SPLIT_NAMES}


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran_order:
            raise ValueError("Fortran-ordered array")
        return tuple(int(n) for n in shape), dtype, f.tell()


def file_sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def describe_file(path: Path) -> dict:
    """The meta.json record of one .npy file: name, shape, dtype, size in bytes, sha256."""
    shape, dtype, _ = read_npy_header(path)
    return {"file": path.name, "shape": list(shape), "dtype": dtype.str, "bytes": path.stat().st_size,
            "sha256": file_sha256(path)}


class Cache:
    """An opened, checked cache directory. Use `open_cache` to get one."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.meta = meta
        self.class_ids: list[str] = list(meta["class_ids"])
        self.class_names: list[str] = list(meta["class_names"])
        self.num_classes: int = len(self.class_ids)
        self.image_size: int = int(meta["image_size"])
        self.splits: tuple[str, ...] = tuple(s for s in SPLIT_NAMES if s in meta["splits"])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (N, H, W, 3) memory-mapped read-only, labels int64 (N,)) of one split."""
        if name not in self.splits:
            raise CacheError(f"cache {self.path} has no split {name!r}; it has: {', '.join(self.splits) or 'none'}")
        images = np.load(self.path / images_name(name), mmap_mode="r")
        labels = np.load(self.path / labels_name(name))
        return images, labels

    def count(self, name: str) -> int:
        return int(self.meta["splits"][name]["count"])

    @property
    def params(self) -> dict:
        """The decode parameters it was built with (`decode_params`)."""
        return params_of(self.meta)

    def mean_std(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Per-channel mean and std (0..1 scale) of the train split: meta.json's record, else computed from it."""
        stats = self.meta.get("pixel_stats") or stats_of_split(self.split("train")[0])
        if not stats or min(stats["std"]) <= 0:
            raise CacheError(f"the train split of {self.path} has no pixel variation to normalise by; set data.mean "
                             f"and data.std in the config")
        return tuple(stats["mean"]), tuple(stats["std"])

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.count(s)}" for s in self.splits)
        return f"Cache({str(self.path)!r}, classes={self.num_classes}, size={self.image_size}, {counts})"


def _prepare_hint(cache_dir: Path) -> str:
    return f"python -m fasttrain.data prepare --source SOURCE --root DATA --cache-dir {cache_dir}"


def read_meta(cache_dir: Path) -> dict:
    """meta.json of a cache, checked for format version and the keys every cache has (the files are not checked)."""
    meta_path = cache_dir / META_NAME
    if not cache_dir.is_dir():
        raise CacheError(f"no cache at {cache_dir}; build it with: {_prepare_hint(cache_dir)} (SOURCE: tiny-imagenet "
                         f"or imagefolder, DATA: the raw images)")
    if not meta_path.is_file():
        raise CacheError(f"{meta_path} is missing: {cache_dir} is not a complete cache; rebuild it with: "
                         f"{_prepare_hint(cache_dir)}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheError(f"{meta_path} is unreadable ({err}); rebuild the cache") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise CacheError(f"{meta_path} has format version {found!r}, this fasttrain reads {FORMAT_VERSION}; "
                         f"rebuild the cache")
    for key in ("class_ids", "class_names", "image_size", "splits"):
        if key not in meta:
            raise CacheError(f"{meta_path} lacks {key!r}; rebuild the cache")
    return meta


def _check_file(cache_dir: Path, record: dict, expected_shape: tuple, expected_dtype: np.dtype) -> None:
    path = cache_dir / record["file"]
    if not path.is_file():
        raise CacheError(f"{path} is missing; rebuild the cache")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CacheError(f"{path} is {size} bytes, meta.json records {record['bytes']} (truncated or replaced); "
                         f"rebuild the cache")
    try:
        shape, dtype, offset = read_npy_header(path)
    except (OSError, ValueError) as err:
        raise CacheError(f"{path} is not a readable .npy file ({err}); rebuild the cache") from None
    if shape != tuple(expected_shape) or tuple(record["shape"]) != shape or dtype != expected_dtype:
        raise CacheError(f"{path} holds {dtype}{list(shape)}, expected {expected_dtype}{list(expected_shape)}; "
                         f"rebuild the cache")
    if offset + int(np.prod(shape)) * dtype.itemsize != size:
        raise CacheError(f"{path} size does not match its header shape {list(shape)} (truncated); rebuild the cache")


def open_cache(cache_dir: str | os.PathLike, *, verify: bool = False) -> Cache:
    """Open a cache, checking meta, shapes, file sizes and label range; `verify=True` also checks every sha256.

    Raises CacheError (a UserError) naming the offending file on any problem.
    """
    cache_dir = Path(cache_dir)
    meta = read_meta(cache_dir)
    size = int(meta["image_size"])
    num_classes = len(meta["class_ids"])
    if len(meta["class_names"]) != num_classes or num_classes == 0:
        raise CacheError(f"{cache_dir / META_NAME} has {num_classes} class ids and {len(meta['class_names'])} "
                         f"names; rebuild the cache")
    for split, entry in meta["splits"].items():
        if split not in SPLIT_NAMES:
            raise CacheError(f"{cache_dir / META_NAME} names an unknown split {split!r}; rebuild the cache")
        count = int(entry["count"])
        _check_file(cache_dir, entry["images"], (count, size, size, 3), np.dtype(np.uint8))
        _check_file(cache_dir, entry["labels"], (count,), np.dtype(np.int64))
        labels_path = cache_dir / entry["labels"]["file"]
        labels = np.load(labels_path)
        if count and (labels.min() < 0 or labels.max() >= num_classes):
            raise CacheError(f"{labels_path} has labels outside [0, {num_classes}); rebuild the cache")
        if verify:
            for record in (entry["images"], entry["labels"]):
                path = cache_dir / record["file"]
                if file_sha256(path) != record["sha256"]:
                    raise CacheError(f"{path} fails its sha256 checksum (content changed or corrupt); "
                                     f"rebuild the cache")
    return Cache(cache_dir, meta)


def find_caches(path: str | os.PathLike) -> list[Path]:
    """The caches at `path`: itself if it is one, else the caches in it and in its process/ folder, by name."""
    path = Path(path)
    if (path / META_NAME).is_file():
        return [path]
    found = []
    for folder in (path, path / CACHES_DIRNAME):
        if folder.is_dir():
            found += [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and (p / META_NAME).is_file()]
    return found


# --- building: temporary directory, fsync, one rename -------------------------------------------

def temp_dir_for(cache_dir: Path) -> Path:
    """A fresh hidden sibling directory to build `cache_dir` in."""
    tmp = cache_dir.parent / f".{cache_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def remove_leftovers(cache_dir: Path) -> None:
    """Delete temporary/old siblings left by a killed build. Call only while holding the cache's lock."""
    remove_replace_leftovers(cache_dir)


def is_replaceable(cache_dir: Path) -> bool:
    """True if `cache_dir` is absent, empty, or holds only cache files (never delete a foreign directory)."""
    if not cache_dir.exists():
        return True
    if not cache_dir.is_dir():
        return False
    return all(entry.is_file() and entry.name in cache_file_names() for entry in cache_dir.iterdir())


def publish(tmp_dir: Path, cache_dir: Path, meta: dict) -> None:
    """Write meta.json last, fsync everything, and rename `tmp_dir` to `cache_dir` (replacing an old cache)."""
    meta_path = tmp_dir / META_NAME
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    for entry in tmp_dir.iterdir():
        fd = os.open(entry, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(tmp_dir)
    if cache_dir.exists() and not is_replaceable(cache_dir):
        raise CacheError(f"{cache_dir} exists and is not a fasttrain cache; choose another cache dir or remove it")
    replace_dir(tmp_dir, cache_dir)
