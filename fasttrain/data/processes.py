"""Worker processes for CPU-bound data work: how many cores, and a start method that is safe beside threads."""

from __future__ import annotations

import multiprocessing
import os


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
