"""The image files predict is given: folders walked recursively, each file decoded as prepare decodes it, in batches."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from fasttrain.data.decode import DecodeError, decode_file, quiet_opencv
from fasttrain.data.sources import IMAGE_EXTENSIONS
from fasttrain.errors import UserError

# Inside folders, files with these endings are taken as images (what OpenCV reads); a file named on the
# command line is tried whatever its name.
FOLDER_IMAGE_EXTENSIONS = tuple(sorted(set(IMAGE_EXTENSIONS) | {
    ".jpe", ".jp2", ".tif", ".tiff", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic",
}))


def list_images(inputs: list[str]) -> list[Path]:
    """Files named directly plus image files found under folders (sorted per folder); duplicates once, in order."""
    found: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            inside = sorted(Path(dirpath) / name for dirpath, _, names in os.walk(path)
                            for name in names if name.lower().endswith(FOLDER_IMAGE_EXTENSIONS))
            if not inside:
                raise UserError(f"folder {path} holds no image files ({', '.join(FOLDER_IMAGE_EXTENSIONS)}); "
                                f"pass a folder of images or image files")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"no such file or folder: {path}; pass image files or folders of images")
    seen: set[Path] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def _decode(job: tuple[Path, int]) -> tuple[Path, np.ndarray | None, str | None]:
    path, size = job
    try:
        return path, decode_file(path, size), None
    except DecodeError as err:
        return path, None, str(err)


def decoded_batches(paths: list[Path], size: int, batch_size: int,
                    ) -> Iterator[tuple[list[Path], np.ndarray, list[tuple[Path, str]]]]:
    """(paths, uint8 (n, size, size, 3) RGB, [(path, reason) of files that failed]) per batch of `paths`.

    OpenCV releases the GIL while decoding, so a few threads decode in parallel without new processes.
    """
    quiet_opencv()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            results = list(pool.map(_decode, [(p, size) for p in chunk]))
            good = [(p, image) for p, image, _ in results if image is not None]
            failed = [(p, reason) for p, _, reason in results if reason is not None]
            pixels = np.stack([image for _, image in good]) if good else np.zeros((0, size, size, 3), np.uint8)
            yield [p for p, _ in good], pixels, failed
