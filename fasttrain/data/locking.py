"""An exclusive file lock next to a path, so two processes (two DDP ranks) never build the same thing at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


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
