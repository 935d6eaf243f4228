"""User-facing errors: one clear line, exit status 2, no traceback unless asked for."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Callable

USER_ERROR_EXIT = 2
CLOSED_PIPE_EXIT = 128 + 13  # killed by SIGPIPE, as a shell reports a tool whose reader went away


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, corrupt file, wrong checkpoint).

    The message is one line: what is wrong, where, and how to fix it.
    """


def nearest_first(wrong: str, valid: list[str]) -> list[str]:
    """`valid` sorted with the closest matches to `wrong` first, the rest alphabetically."""
    close = difflib.get_close_matches(wrong, valid, n=len(valid), cutoff=0.5)
    return close + sorted(name for name in valid if name not in close)


def did_you_mean(wrong: str, valid: list[str]) -> str:
    """"did you mean 'x'? " for the closest of `valid` to a mistyped `wrong`, or "" when none is close."""
    close = difflib.get_close_matches(wrong, valid, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose bad-argument report is a UserError (one line, exit status 2) instead of usage + exit."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def run_cli(main: Callable[[], int | None], *, debug: bool | None = None) -> int:
    """Run a CLI entry point, turning UserError into one line on stderr and exit status 2.

    Under torchrun every rank meets the same error: only rank 0 (RANK) prints it, every rank exits 2.
    `debug` (or FASTTRAIN_DEBUG=1) re-raises so the full traceback is shown. A reader that closed the pipe
    (`| head`) ends the command quietly with CLOSED_PIPE_EXIT.
    """
    if debug is None:
        debug = "--debug" in sys.argv or os.environ.get("FASTTRAIN_DEBUG") == "1"
    try:
        try:
            return int(main() or 0)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as an "Exception ignored" at interpreter exit
    except BrokenPipeError:
        return _closed_pipe()
    except UserError as err:
        if debug:
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def _closed_pipe() -> int:
    """Nothing more can be written: point stdout at /dev/null so the interpreter's last flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return CLOSED_PIPE_EXIT
