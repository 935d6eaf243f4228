"""fasttrain's throughput and parity benchmarks and its GPU check: `python -m kernels_bench SUITE`.

Layout: `core.py` is the measurement core (timing, peaks, versions, crash guard, the Trainer harness, case
records); `suites/<suite>.py` is one suite each, exposing `run(args) -> dict` (the figures, JSON-ready),
optionally `add_arguments(parser)`, `to_markdown(report) -> str` and `DEVICES = ("cpu",)` when it never uses a
GPU. A suite that returns `cases` and `result` has them placed at the top level of the report, next to `suite`,
`device`, `versions` and `environment`; other suites' figures sit under `result`; a report with a non-empty
`failed` list exits 1. The GPU check's stages are suites too (preflight, sync_audit, dali_reuse, t2t_attention,
ddp_buckets); `gpu_check.sh` runs them call by call, `check_summary.py` writes its summary, and `dali_wheel.py`
carries DALI to a machine without a package registry in parts.
"""
