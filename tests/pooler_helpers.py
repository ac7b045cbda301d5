"""Random batches and seeded poolers shared by the pooler test modules."""
from __future__ import annotations

import torch

from glotpool import build_pooler

D = 24


def make_batch(lengths, L=None, D=D, seed=0, left_pad=False, dtype=torch.float32):
    """``h [B, L, D]`` standard normal (seeded) and a 0/1 ``mask [B, L]`` with ``lengths`` real tokens per row."""
    g = torch.Generator().manual_seed(seed)
    L = L or max(lengths)
    h = torch.randn(len(lengths), L, D, generator=g, dtype=dtype)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left_pad:
            mask[b, L - n:] = 1
        else:
            mask[b, :n] = 1
    return h, mask


def make(name, seed=0, **kw):
    """A float64 pooler with seeded initial weights."""
    torch.manual_seed(seed)
    return build_pooler(name, in_dim=D, **kw).double()
