"""Attention readout: one learned score per token, softmax over the sentence's real tokens, weighted sum.

    s_i = w2ᵀ tanh(W1 u_i + b1)               (hidden width max(128, dim // 2) by default)
    π   = softmax_{i ∈ real tokens}(s)          (exactly 0 on padding)
    z   = Σ_i π_i u_i

``b2`` is left out: softmax is shift-invariant, so it would receive a zero gradient and change nothing.

Shapes: ``u [B, L, F]``, ``mask [B, L]`` (bool) → ``z [B, F]``, ``π [B, L]``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from glotpool.pooling.base import at_least_fp32, per_token


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over positions where ``mask`` is true; masked positions get exactly 0.

    Computed in float32 at least (float64 stays float64), also under bf16 autocast: a bf16 softmax over ~100
    tokens loses the small weights. Every row must have at least one true position (the poolers validate this).
    """
    scores = at_least_fp32(scores)
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def default_readout_hidden(dim: int) -> int:
    return max(128, dim // 2)


class AttentionReadout(nn.Module):
    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        self.dim = dim
        self.hidden = hidden or default_readout_hidden(dim)
        self.proj = nn.Linear(dim, self.hidden)  # W1, b1
        self.score = nn.Linear(self.hidden, 1, bias=False)  # w2
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        self.score.reset_parameters()

    def scores(self, u: Tensor) -> Tensor:
        """Unnormalised token scores ``s [B, L]``."""
        return self.score(torch.tanh(self.proj(u))).squeeze(-1)

    def forward(self, u: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # score only the real tokens (packed): the MLP is the readout's main cost; padding scores are masked anyway
        scores = per_token(self.scores, u, mask, fill=None)
        pi = masked_softmax(scores, mask)  # [B, L], float32 (or float64)
        z = torch.bmm(pi.to(u.dtype).unsqueeze(1), u).squeeze(1)  # [B, F]
        return z, pi

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}"
