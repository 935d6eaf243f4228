"""Fetch tiny-imagenet-200.zip (resumable), check its md5 before extracting, extract atomically."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

from tqdm import tqdm

from fasttrain.atomic import file_digest, fsync_dir
from fasttrain.atomic import exclusive_lock
from fasttrain.data.sources import TINY_IMAGENET_DIRNAME
from fasttrain.errors import UserError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
ZIP_NAME = "tiny-imagenet-200.zip"
_CHUNK = 1 << 20


class DownloadError(UserError):
    """The archive could not be fetched, failed its checksum, or could not be extracted."""


def file_md5(path: Path) -> str:
    return file_digest(path, "md5")


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Download `url` into `part`, continuing from its current size with an HTTP Range request."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part file already holds every byte
            return
        raise
    with response:
        resumed = have and response.status == 206
        mode = "ab" if resumed else "wb"
        length = response.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length else None
        with open(part, mode) as out, tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                                           desc=f"downloading {ZIP_NAME}", disable=None) as progress:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                progress.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())


def _extract(zip_path: Path, root: Path) -> None:
    """Extract into a temporary sibling, then rename tiny-imagenet-200/ into `root` in one step."""
    staging = root / f".extract-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(staging)  # extractall drops absolute paths and '..' members
        except (zipfile.BadZipFile, OSError) as err:
            raise DownloadError(f"cannot extract {zip_path} ({err}); delete it and run again with --download") from None
        extracted = staging / TINY_IMAGENET_DIRNAME
        if not (extracted / "wnids.txt").is_file():
            raise DownloadError(f"{zip_path} does not contain {TINY_IMAGENET_DIRNAME}/wnids.txt; it is not the "
                                f"Tiny-ImageNet archive")
        os.rename(extracted, root / TINY_IMAGENET_DIRNAME)
        fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_tiny_imagenet(root: str | os.PathLike, *, url: str = TINY_IMAGENET_URL, md5: str = TINY_IMAGENET_MD5,
                         timeout: float = 60.0) -> Path:
    """Make `<root>/tiny-imagenet-200/` exist: reuse it, else extract `<root>/tiny-imagenet-200.zip`, else download it.

    A partial download (`.part`) is continued on the next call. The md5 is checked before any
    extraction; without network the error says where to place the zip by hand.
    """
    root = Path(root)
    data_dir = root / TINY_IMAGENET_DIRNAME
    if (root / "wnids.txt").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    zip_path = root / ZIP_NAME
    with exclusive_lock(zip_path):
        if (data_dir / "wnids.txt").is_file():
            return data_dir
        if not zip_path.is_file():
            part = zip_path.with_name(ZIP_NAME + ".part")
            try:
                _fetch(url, part, timeout)
            except (urllib.error.URLError, OSError, ValueError) as err:
                reason = getattr(err, "reason", None) or err
                raise DownloadError(f"cannot download {url} ({reason}); download it by hand and place it at "
                                    f"{zip_path}, then run again") from None
            if file_md5(part) != md5:
                part.unlink()
                raise DownloadError(f"downloaded {url} but its md5 is not {md5} (corrupt transfer); run again "
                                    f"to retry, or place a good copy at {zip_path}")
            os.replace(part, zip_path)
        else:
            found = file_md5(zip_path)
            if found != md5:
                raise DownloadError(f"{zip_path} has md5 {found}, expected {md5} (incomplete or a different file); "
                                    f"delete it and run again with --download")
        _extract(zip_path, root)
    return data_dir
