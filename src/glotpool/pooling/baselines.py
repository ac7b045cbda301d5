"""Parameter-free baselines: mean, max, first real token (``cls``), last real token, SGPT's weighted mean."""
from __future__ import annotations

import torch
from torch import Tensor

from glotpool.pooling.base import Pooler, _first_real_index, _last_real_index, register_pooler


@register_pooler("mean")
class MeanPooling(Pooler):
    """``z = Σ_i m_i h_i / Σ_i m_i``."""

    def _pool(self, h, mask):
        w = mask.to(h.dtype)
        w = w / w.sum(1, keepdim=True)
        return torch.bmm(w.unsqueeze(1), h).squeeze(1), w


@register_pooler("max")
class MaxPooling(Pooler):
    """Per-dimension maximum over real tokens. Weights: the fraction of dimensions each token wins."""

    def _pool(self, h, mask):
        masked = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))  # out-of-place: the input stays intact
        z, arg = masked.max(1)  # [B, D]
        w = torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
        w.scatter_add_(1, arg, torch.full_like(z, 1.0 / h.shape[-1]))
        return z, w


def _one_hot_pick(h: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    z = h[torch.arange(h.shape[0], device=h.device), idx]
    w = torch.nn.functional.one_hot(idx, h.shape[1]).to(h.dtype)
    return z, w


@register_pooler("cls")
class CLSPooling(Pooler):
    """The first *real* token (``[CLS]`` for BERT-style encoders), correct for left- and right-padded batches."""

    def _pool(self, h, mask):
        return _one_hot_pick(h, _first_real_index(mask))


@register_pooler("last")
class LastTokenPooling(Pooler):
    """The last *real* token (decoders), correct for left- and right-padded batches."""

    def _pool(self, h, mask):
        return _one_hot_pick(h, _last_real_index(mask))


# ----------------------------------------------------------------------------------------------------------------
# SGPT position-weighted mean


@register_pooler("weighted_mean")
class WeightedMeanPooling(Pooler):
    """SGPT weighted mean for causal decoders: later tokens have seen more context, so they weigh more::

        w_i = p_i / Σ_j p_j,   p_i = 1-based position of token i among the sentence's *real* tokens
        z = Σ_i w_i h_i

    Positions are counted over real tokens only (``cumsum`` of the mask), so left- and right-padded batches give
    the same ``z``. Not permutation invariant, by design.
    """

    def _pool(self, h, mask):
        pos = mask.to(h.dtype).cumsum(1) * mask  # [B, L]: 1..n on real tokens, 0 on padding
        w = pos / pos.sum(1, keepdim=True)
        return torch.bmm(w.unsqueeze(1), h).squeeze(1), w
