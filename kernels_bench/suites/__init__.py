"""One module per benchmark suite (`python -m kernels_bench SUITE`); kernels_bench/__init__.py says what a suite exposes."""
