"""glotpool: sentence vectors from a frozen language model's token states with GLOT token-graph pooling.

The top-level names are imported lazily, so ``import glotpool.<light module>`` (and the CLI's start-up) does not pay
for PyTorch Geometric until a pooler is actually used.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "POOLERS": "glotpool.poolers", "Pooler": "glotpool.poolers", "GLOTPooling": "glotpool.poolers",
    "AdaPool": "glotpool.poolers", "MeanPooling": "glotpool.poolers", "MaxPooling": "glotpool.poolers",
    "CLSPooling": "glotpool.poolers", "LastTokenPooling": "glotpool.poolers", "build_pooler": "glotpool.poolers",
    "load_pooler": "glotpool.poolers", "register_pooler": "glotpool.poolers",
    "available_poolers": "glotpool.poolers", "count_parameters": "glotpool.poolers",
    "LatentAttentionPooling": "glotpool.attention_poolers", "PMAPooling": "glotpool.attention_poolers",
    "WeightedMeanPooling": "glotpool.attention_poolers", "MLPAttentionPooling": "glotpool.attention_poolers",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'glotpool' has no attribute {name!r}")
