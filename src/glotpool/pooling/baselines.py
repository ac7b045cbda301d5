"""Baselines: mean, max, first real token (``cls``), last real token, SGPT's weighted mean (parameter-free), and
mean + a trainable linear map."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from glotpool.pooling.base import Pooler, PoolerConfig, _first_real_index, _last_real_index, register_pooler


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


# ----------------------------------------------------------------------------------------------------------------
# mean + a trainable linear map: the cheapest trained baseline


@dataclass
class MeanLinearConfig(PoolerConfig):
    out_features: int | None = None  # default in_dim


@register_pooler("mean_linear")
class MeanLinearPooling(Pooler):
    """Mean pooling followed by a trainable linear projection ``z = W mean(h) + b``, initialised to the identity
    (square) so training starts from plain mean pooling: what a learned head adds over a learned linear map."""

    Config = MeanLinearConfig

    def __init__(self, in_dim: int, **options):
        super().__init__(in_dim, **options)
        out = self.config.out_features or in_dim
        if out < 1:
            raise ValueError(f"out_features must be >= 1, got {out}")
        self.proj = torch.nn.Linear(in_dim, out)
        self._identity_init()

    def _identity_init(self) -> None:
        if self.proj.out_features == self.in_dim:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(self.in_dim))
                self.proj.bias.zero_()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._identity_init()

    @property
    def out_dim(self) -> int:
        return self.config.out_features or self.in_dim

    def _pool(self, h, mask):
        w = mask.to(h.dtype)
        w = w / w.sum(1, keepdim=True)
        return self.proj(torch.bmm(w.unsqueeze(1), h).squeeze(1)), w
