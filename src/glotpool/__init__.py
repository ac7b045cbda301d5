"""glotpool: sentence vectors from a frozen language model's token states with GLOT token-graph pooling."""
__version__ = "0.1.0"

from glotpool.poolers import (  # noqa: E402
    POOLERS,
    AdaPool,
    CLSPooling,
    GLOTPooling,
    LastTokenPooling,
    MaxPooling,
    MeanPooling,
    Pooler,
    available_poolers,
    build_pooler,
    load_pooler,
    register_pooler,
)

__all__ = [
    "__version__", "POOLERS", "Pooler", "GLOTPooling", "AdaPool", "MeanPooling", "MaxPooling", "CLSPooling",
    "LastTokenPooling", "build_pooler", "load_pooler", "register_pooler", "available_poolers",
]
