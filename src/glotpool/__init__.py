"""glotpool: sentence vectors from a frozen language model's token states with GLOT token-graph pooling.

The top-level names are imported lazily, so ``import glotpool.<light module>`` (and the CLI's start-up) does not pay
for PyTorch Geometric until a pooler is actually used.
"""
from __future__ import annotations

import importlib

try:  # one source of the version: the package metadata (pyproject.toml's [project] version)
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("glotpool")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "POOLERS": "glotpool.pooling", "Pooler": "glotpool.pooling", "GLOTPooling": "glotpool.pooling",
    "AdaPool": "glotpool.pooling", "MeanPooling": "glotpool.pooling", "MaxPooling": "glotpool.pooling",
    "CLSPooling": "glotpool.pooling", "LastTokenPooling": "glotpool.pooling", "build_pooler": "glotpool.pooling",
    "load_pooler": "glotpool.pooling", "register_pooler": "glotpool.pooling",
    "available_poolers": "glotpool.pooling", "count_parameters": "glotpool.pooling",
    "LatentAttentionPooling": "glotpool.pooling", "PMAPooling": "glotpool.pooling",
    "WeightedMeanPooling": "glotpool.pooling", "MLPAttentionPooling": "glotpool.pooling",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'glotpool' has no attribute {name!r}")
