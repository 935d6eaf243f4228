"""Safe writes to disk: atomic (temporary file in the same directory, fsync, os.replace — nothing half-written), and
the exclusive lock that keeps two writers of the same thing apart."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    """0666 less the process umask: what open() would have given (mkstemp alone makes files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[object], None], *, binary: bool = True) -> None:
    """Call `write(fileobj)` on a temporary file next to `path`, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a complete, fsynced `staging` directory to `target`, replacing any old one with two renames.

    The old directory is moved aside first and deleted last, so `target` is never a half-written tree.
    """
    staging, target = Path(staging), Path(target)
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)
    fsync_dir(target.parent)


def remove_replace_leftovers(target: str | os.PathLike) -> None:
    """Delete `.NAME.tmp-*` staging and `.NAME.old-*` directories a killed writer left beside `target`.

    Call only while holding the lock that guards `target`.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk_bytes: int = 8 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks (no memory map, so resident memory stays small)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# ---- one writer at a time ----
def lock_path_for(target: str | os.PathLike) -> Path:
    """The lock file used for `target`: a hidden sibling `.<name>.lock`."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike) -> Iterator[Path]:
    """Hold an flock on `.<name>.lock` beside `target` for the duration; waits while another process holds it.

    The lock is released by the kernel if the holder dies, so a killed build never blocks the next.
    """
    lock_file = lock_path_for(target)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield lock_file
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class LockHeld(Exception):
    """Another process holds the lock; `holder` is what that process recorded in the lock file ({} when unreadable)."""

    def __init__(self, lock_file: Path, holder: dict):
        super().__init__(f"{lock_file} is held by {holder or 'another process'}")
        self.lock_file, self.holder = lock_file, holder


def read_lock_holder(lock_file: str | os.PathLike) -> dict:
    """What the holder of `lock_file` recorded (pid, host, since), or {} when nothing readable is there yet."""
    try:
        holder = json.loads(Path(lock_file).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def exclusive_lock_or_fail(target: str | os.PathLike, holder: dict,
                           patience_s: Callable[[dict], float] = lambda holder: 0.0) -> Iterator[Path]:
    """Hold an flock on `.<name>.lock` beside `target` for the duration without queueing behind another holder:
    LockHeld when it is taken. `patience_s(record)` says how long to keep retrying given what the current holder
    recorded (0: give up at once). The holder writes `holder` (JSON) into the lock file, so a refused process can
    name it; the kernel releases the lock when the holder dies, so a kill -9 never leaves it stale.
    """
    lock_file = lock_path_for(target)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                seen = read_lock_holder(lock_file)
                if time.monotonic() - start >= patience_s(seen):
                    raise LockHeld(lock_file, seen) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield lock_file
        finally:
            os.ftruncate(fd, 0)  # released: nobody is named as holder any more
            # Unlocked explicitly: a forked child (a DataLoader worker) shares this descriptor and would keep it.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
