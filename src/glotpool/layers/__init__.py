"""Dense graph layers that PyTorch Geometric does not ship in batched dense form."""
from glotpool.layers.dense_gatv2_conv import DenseGATv2Conv

__all__ = ["DenseGATv2Conv"]
