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


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over positions where ``mask`` is true; masked positions get exactly 0.

    Every row must have at least one true position (the poolers validate this).
    """
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
        n_real = int(mask.sum())
        if n_real < 0.9 * mask.numel():
            # Score only the real tokens: the MLP is the readout's main cost and padding scores are discarded anyway.
            s = self.scores(u[mask])
            scores = torch.full(mask.shape, float("-inf"), dtype=s.dtype, device=u.device).masked_scatter(mask, s)
        else:
            scores = self.scores(u)
        pi = masked_softmax(scores, mask)  # [B, L]
        z = torch.bmm(pi.unsqueeze(1), u).squeeze(1)  # [B, F]
        return z, pi

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}"
