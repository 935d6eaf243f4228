"""fasttrain's throughput and parity benchmarks, one suite per module, run with `python -m kernels_bench SUITE`.

A suite is a module `kernels_bench/<suite>.py` exposing `run(args) -> dict` (the figures, JSON-ready),
optionally `add_arguments(parser)` for its own options, `to_markdown(result) -> str`, and
`DEVICES = ("cpu",)` when it never uses a GPU. A suite that returns `cases` (one object per measured
case) and `result` (its summary) has them placed at the top level of the report, next to `suite`,
`device`, `versions` and `environment`; other suites' figures sit under `result`. `all` runs every
suite in one process. Shared helpers live in `kernels_bench/measure/`.
"""
