"""A learnable synthetic data set written as real JPEG files in the Tiny-ImageNet layout, deterministic by seed.

Each class is one pattern family (disk, square, triangle, ring, plus, two stripe orientations,
checkerboard, star, dot grid) drawn in the class's own hue, with random position, scale,
rotation, background and pixel noise. Shape and colour each separate the classes, so a small
CNN learns it in seconds; chance-level accuracy on it means a bug, not a hard task.
"""

from __future__ import annotations

import colorsys
import functools
import json
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from fasttrain.atomic import fsync_dir, remove_replace_leftovers, replace_dir
from fasttrain.atomic import exclusive_lock
from fasttrain.data.cache import CACHES_DIRNAME
from fasttrain.data.prepare import pool_context
from fasttrain.errors import UserError

GENERATOR_VERSION = 1
MARKER_NAME = ".fasttrain-synthetic.json"
PATTERNS = ("disk", "square", "triangle", "ring", "plus", "horizontal-stripes", "vertical-stripes",
            "checkerboard", "star", "dots")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_JPEG_QUALITY = 90
_GOLDEN = 0.6180339887


def class_id(index: int) -> str:
    return f"s{index:04d}"


def class_pattern(index: int) -> str:
    return PATTERNS[index % len(PATTERNS)]


def class_rgb(index: int) -> tuple[float, float, float]:
    """The class's base colour: hues spread by the golden ratio so neighbours differ most."""
    return colorsys.hsv_to_rgb((index * _GOLDEN) % 1.0, 0.9, 0.95)


def _polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return mask


def _rotated(points: np.ndarray, angle: float, center: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + center


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> np.ndarray:
    """(size, size, 2) float32 x, y coordinates of pixel centres (read-only, shared)."""
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    centres = np.stack([grid_x, grid_y], axis=-1)
    centres.flags.writeable = False
    return centres


def _pattern_mask(pattern: str, size: int, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Foreground coverage in [0, 1] (size, size) of one pattern instance."""
    if pattern == "disk":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return _polygon_mask(size, center + radius * np.stack([np.cos(t), np.sin(t)], 1)).astype(np.float32) / 255
    if pattern == "square":
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * radius * 0.8
        return _polygon_mask(size, _rotated(corners, angle, center)).astype(np.float32) / 255
    if pattern == "triangle":
        t = angle + np.array([0, 2, 4]) * np.pi / 3
        return _polygon_mask(size, center + radius * np.stack([np.cos(t), np.sin(t)], 1)).astype(np.float32) / 255
    if pattern == "star":
        t = angle + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.42)
        return _polygon_mask(size, center + np.stack([r * np.cos(t), r * np.sin(t)], 1)).astype(np.float32) / 255
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    offset = _pixel_centres(size) - center.astype(np.float32)
    # rotate pixel offsets by -angle into the pattern's own frame
    u = offset[..., 0] * c + offset[..., 1] * s
    v = offset[..., 1] * c - offset[..., 0] * s
    distance = np.hypot(u, v)
    if pattern == "ring":
        return np.clip(1.0 - np.abs(distance - radius * 0.75) / (radius * 0.22), 0, 1) ** 0.5
    if pattern == "plus":
        arm = radius * 0.28
        bar = ((np.abs(u) < arm) & (np.abs(v) < radius)) | ((np.abs(v) < arm) & (np.abs(u) < radius))
        return bar.astype(np.float32)
    patch = ((np.abs(u) < radius) & (np.abs(v) < radius)).astype(np.float32)
    period = max(radius / 2.5, 2.5)
    if pattern == "horizontal-stripes":
        return patch * ((v / period) % 2 < 1)
    if pattern == "vertical-stripes":
        return patch * ((u / period) % 2 < 1)
    if pattern == "checkerboard":
        return patch * (((np.floor(u / period) + np.floor(v / period)) % 2) == 0)
    if pattern == "dots":
        cell = period * 1.6
        du, dv = (u % cell) - cell / 2, (v % cell) - cell / 2
        return patch * (np.hypot(du, dv) < cell * 0.32)
    raise ValueError(pattern)


def render_image(class_index: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One RGB uint8 (size, size, 3) picture of a class and its bounding box (x0, y0, x1, y1)."""
    pattern = class_pattern(class_index)
    radius = size * rng.uniform(0.22, 0.38)
    margin = radius * 0.9
    center = rng.uniform(margin, size - margin, 2)
    # stripes keep their orientation (it is what tells the two stripe classes apart)
    max_turn = 0.3 if pattern.endswith("stripes") else np.pi
    angle = rng.uniform(-max_turn, max_turn)
    coverage = _pattern_mask(pattern, size, center, radius, angle)[..., None]

    background = (rng.uniform(0.15, 0.85) + rng.normal(0, 0.06, 3)).astype(np.float32)
    gradient = rng.normal(0, 0.12, 2).astype(np.float32)
    ramp = _pixel_centres(size) / size - 0.5
    canvas = background + (ramp @ gradient)[..., None]
    colour = (np.array(class_rgb(class_index)) * rng.uniform(0.75, 1.05) + rng.normal(0, 0.04, 3)).astype(np.float32)
    image = canvas + (colour - canvas) * coverage
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.05)
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    x0, y0 = np.clip(center - radius, 0, size - 1).astype(int)
    x1, y1 = np.clip(center + radius, 0, size - 1).astype(int)
    return pixels, (int(x0), int(y0), int(x1), int(y1))


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".JPEG", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    path.write_bytes(encoded.tobytes())


def _image_rng(seed: int, split: str, class_index: int, item: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], class_index, item])


def _render_files(job: tuple) -> list[tuple[int, int, int, int]]:
    """Render and write one chunk of (split, class, item, relative path); returns their bounding boxes."""
    tree, size, seed, items = job
    boxes = []
    for split, class_index, item, relative in items:
        pixels, box = render_image(class_index, _image_rng(seed, split, class_index, item), size)
        _write_jpeg(tree / relative, pixels)
        boxes.append(box)
    return boxes


def _generate(tree: Path, classes: int, per_class: int, val_per_class: int, size: int, seed: int,
              workers: int) -> None:
    wnids = [class_id(c) for c in range(classes)]
    (tree / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (tree / "words.txt").write_text("".join(
        f"{w}\tsynthetic {class_pattern(c)} (hue {((c * _GOLDEN) % 1.0):.3f})\n" for c, w in enumerate(wnids)))
    items = []
    for c, wnid in enumerate(wnids):
        (tree / "train" / wnid / "images").mkdir(parents=True)
        items += [("train", c, i, f"train/{wnid}/images/{wnid}_{i}.JPEG") for i in range(per_class)]
    (tree / "val" / "images").mkdir(parents=True)
    items += [("val", k % classes, k // classes, f"val/images/val_{k}.JPEG") for k in range(classes * val_per_class)]
    (tree / "test" / "images").mkdir(parents=True)
    test_classes = np.random.default_rng([seed, _SPLIT_CODES["test"]]).integers(0, classes, classes * val_per_class)
    items += [("test", int(c), k, f"test/images/test_{k}.JPEG") for k, c in enumerate(test_classes)]

    # every image has its own generator, so the bytes do not depend on how the work is divided
    jobs = [(tree, size, seed, items[start:start + 500]) for start in range(0, len(items), 500)]
    if workers > 1 and len(jobs) > 1:
        with pool_context().Pool(min(workers, len(jobs))) as pool:
            chunks = pool.map(_render_files, jobs, chunksize=1)
    else:
        chunks = [_render_files(job) for job in jobs]
    boxes = [box for chunk in chunks for box in chunk]

    train_boxes: dict[str, list[str]] = {wnid: [] for wnid in wnids}
    annotations = []
    for (split, c, _, relative), box in zip(items, boxes):
        name = relative.rsplit("/", 1)[1]
        coordinates = "\t".join(str(v) for v in box)
        if split == "train":
            train_boxes[wnids[c]].append(f"{name}\t{coordinates}\n")
        elif split == "val":
            annotations.append(f"{name}\t{wnids[c]}\t{coordinates}\n")
    for wnid, lines in train_boxes.items():
        (tree / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(lines))
    (tree / "val" / "val_annotations.txt").write_text("".join(annotations))


def _check(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise UserError(f"synthetic data: {name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def write_synthetic(out: str | os.PathLike, *, classes: int = 10, per_class: int = 500, val_per_class: int = 50,
                    size: int = 64, seed: int = 0, workers: int = 1) -> Path:
    """Write (or find already written) the synthetic Tiny-ImageNet-layout tree at `out`; return `out`.

    Same parameters → byte-identical files, whatever the number of `workers` (processes). A tree already there with the same parameters (its
    marker file says so) is returned at once; one with other parameters is replaced, keeping its
    process/ folder of caches; a non-empty directory that is not a synthetic tree is never touched (UserError).
    """
    params = {"generator_version": GENERATOR_VERSION, "classes": _check("classes", classes, 2, 10000),
              "per_class": _check("per_class", per_class, 2, 100000),
              "val_per_class": _check("val_per_class", val_per_class, 0, 100000),
              "size": _check("size", size, 16, 1024), "seed": _check("seed", seed, 0, 2**63 - 1)}
    workers = _check("workers", workers, 1, 4096)
    out = Path(out)
    marker = out / MARKER_NAME

    def matches() -> bool:
        try:
            return json.loads(marker.read_text()) == params
        except (OSError, ValueError):
            return False

    if matches():
        return out
    with exclusive_lock(out):
        if matches():
            return out
        if out.exists() and not marker.is_file() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out} exists and is not a synthetic data tree; pass an empty or new --out directory")
        remove_replace_leftovers(out)
        staging = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            _generate(staging, params["classes"], params["per_class"], params["val_per_class"], params["size"],
                      params["seed"], workers)
            (staging / MARKER_NAME).write_text(json.dumps(params) + "\n")
            fsync_dir(staging)
            caches = out / CACHES_DIRNAME
            if caches.is_dir():  # the caches of other sizes stay: going back to a size regenerates the same files
                os.rename(caches, staging / CACHES_DIRNAME)
            replace_dir(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out
