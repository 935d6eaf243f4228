"""Shared pytest setup: markers that skip cleanly, small thread counts for 2-core machines."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Spinning OpenMP threads fight every other process for a 2-core machine (a step 10x slower under load);
# sleeping waiters cost little when the cores are free. Subprocess runs inherit this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `"gpu" in keywords`: a folder named gpu is a keyword too
            item.add_marker(skip_gpu)
