"""What every stage shares: its command line (--device, --smoke, --json) and writing its record at once."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

from fasttrain.atomic import atomic_write_json
from fasttrain.errors import OneLineArgumentParser, run_cli


def stage_main(name: str, body: Callable[[argparse.Namespace], dict], argv: list[str] | None = None) -> int:
    """Parse the common arguments, run `body`, write {"stage", "device", "smoke", "seconds", **figures} to --json."""
    parser = OneLineArgumentParser(prog=f"python3 -m kernels_bench.gpu_stages.{name}")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes (the dry run on a CPU)")
    parser.add_argument("--json", type=Path, required=True)

    def main():
        args = parser.parse_args(argv)
        started = time.time()
        figures = body(args)
        record = {"stage": name, "device": args.device, "smoke": args.smoke, "seconds": round(time.time() - started, 2),
                  **figures}
        atomic_write_json(args.json, record)
        print(f"{name}: {record.get('status', 'ok')}", flush=True)
        return 1 if record.get("status") == "failed" else 0

    return run_cli(main)
