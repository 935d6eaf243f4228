"""fasttrain's throughput and parity benchmarks, one suite per module, run with `python -m kernels_bench SUITE`.

A suite is a module `kernels_bench/<suite>.py` exposing `run(args) -> dict` (the figures, JSON-ready),
optionally `add_arguments(parser)` for its own options, `to_markdown(result) -> str`, and
`DEVICES = ("cpu",)` when it never uses a GPU.
"""
