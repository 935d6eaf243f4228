"""A crash_guard worker for tests/test_kernels_bench.py, in a module light to import (the guard's child imports it)."""

import os
import signal


def crash_on_marked(case: dict) -> None:
    """Kill this process (as a segfaulting kernel would) on a case marked "crash"."""
    if case.get("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
