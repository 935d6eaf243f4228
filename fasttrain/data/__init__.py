"""Data: sources (Tiny-ImageNet, ImageFolder, synthetic) → a verified uint8 cache with deterministic splits.

The public entry points are `prepare_cache` (build or reuse a cache), `open_cache` (open and
check one) and `write_synthetic` (a learnable synthetic tree). Submodules are imported lazily so
`import fasttrain.data` stays cheap for the pipeline backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fasttrain.data.cache import Cache, CacheError, open_cache
    from fasttrain.data.prepare import prepare_cache
    from fasttrain.data.synthetic import write_synthetic

_EXPORTS = {
    "Cache": "fasttrain.data.cache",
    "CacheError": "fasttrain.data.cache",
    "open_cache": "fasttrain.data.cache",
    "prepare_cache": "fasttrain.data.prepare",
    "write_synthetic": "fasttrain.data.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fasttrain.data' has no attribute {name!r}")
