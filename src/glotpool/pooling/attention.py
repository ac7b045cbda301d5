"""Learned attention poolers without a graph, and the graph-free GLOT ablation.

``adapool``           attention pooling with a per-token score MLP (Brothers, 2025): ``z = Σ softmax(MLP(h_i)) h_i``.
``latent_attention``  NV-Embed's latent attention pooling (Lee et al., 2024): tokens query a trained latent array.
``pma``               Set Transformer's Pooling by Multihead Attention (Lee et al., ICML 2019): seeds query tokens.
``mlp_attention``     GLOT with the GNN replaced by a per-token MLP of the same shape ("no graph" ablation).

All follow :class:`glotpool.pooling.base.Pooler`: ``_pool(h [B, L, D], mask [B, L]) -> (z [B, out_dim], w [B, L])``
with padding rows of ``h`` already zeroed by ``check_inputs``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glotpool.pooling.base import Pooler, PoolerConfig, at_least_fp32, per_token, register_pooler
from glotpool.pooling.gnn import TokenLayerStack, jumping_knowledge
from glotpool.pooling.readout import AttentionReadout, masked_softmax

def _mean_weights(mask: Tensor, dtype: torch.dtype) -> Tensor:
    w = mask.to(dtype)
    return w / w.sum(1, keepdim=True)


def _check_heads(dim: int, num_heads: int, name: str) -> None:
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"{name}: num_heads={num_heads} must be >= 1 and divide in_dim={dim}; pick a divisor "
                         f"of {dim}")


# ----------------------------------------------------------------------------------------------------------------
# learned poolers


@dataclass
class AdaPoolConfig(PoolerConfig):
    readout_hidden: int | None = None  # default max(128, in_dim // 2)


@register_pooler("adapool")
class AdaPool(Pooler):
    """Learned attention pooling without a graph: ``π = softmax(MLP(h_i))`` over real tokens, ``z = Σ π_i h_i``."""

    Config = AdaPoolConfig

    def __init__(self, in_dim: int, **options):
        super().__init__(in_dim, **options)
        self.readout = AttentionReadout(in_dim, self.config.readout_hidden)

    def _pool(self, h, mask):
        return self.readout(h, mask)


# ----------------------------------------------------------------------------------------------------------------
# NV-Embed latent attention


@dataclass
class LatentAttentionConfig(PoolerConfig):
    num_latents: int = 512  # r: rows of the trained latent array (keys = values)
    num_heads: int = 8
    mlp_hidden: int | None = None  # default 4 * in_dim (NV-Embed's FeedForward mult=4)


@register_pooler("latent_attention")
class LatentAttentionPooling(Pooler):
    """NV-Embed latent attention, as in its released ``LatentAttentionModel`` (pre-norm, residuals)::

        Q = LN_q(H) W_q + b_q                    [B, L, D]   (tokens are the queries)
        K = LN_c(C) W_k + b_k,  V = LN_c(C) W_v + b_v   [r, D]  (C: trained latent array, r latents)
        O = concat_heads softmax(Q_h K_hᵀ / √d_h) V_h · W_o + b_o   [B, L, D]   (d_h = D / heads)
        H' = H + O
        H'' = H' + W_2 GELU(W_1 LN_f(H') + b_1) + b_2
        z = mean over real tokens of H''        [B, D]

    NV-Embed's FeedForward is GEGLU; we use the plain 2-layer GELU MLP. Weights returned: the mean-pooling weights
    (uniform over real tokens), since every token enters ``z`` with the same share.
    """

    Config = LatentAttentionConfig

    def __init__(self, in_dim: int, **options):
        super().__init__(in_dim, **options)
        c = self.config
        if c.num_latents < 1:
            raise ValueError(f"latent_attention: num_latents must be >= 1, got {c.num_latents}")
        _check_heads(in_dim, c.num_heads, "latent_attention")
        hidden = c.mlp_hidden or 4 * in_dim
        self.latents = nn.Parameter(torch.empty(c.num_latents, in_dim))
        self.norm_q = nn.LayerNorm(in_dim)
        self.norm_c = nn.LayerNorm(in_dim)
        self.q_proj, self.k_proj = nn.Linear(in_dim, in_dim), nn.Linear(in_dim, in_dim)
        self.v_proj, self.out_proj = nn.Linear(in_dim, in_dim), nn.Linear(in_dim, in_dim)
        self.norm_f = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, in_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.latents)  # NV-Embed: torch.randn
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def _tokens(self, x: Tensor) -> Tensor:
        """``H''`` of tokens ``x [..., D]`` (packed ``[N, D]`` or padded ``[B, L, D]``): every token queries the
        latents on its own, so the whole path is per-token and runs on the real tokens only."""
        D, nh = self.in_dim, self.config.num_heads
        c = self.norm_c(self.latents)  # [r, D]
        q = self.q_proj(self.norm_q(x)).unflatten(-1, (nh, D // nh)).transpose(-3, -2)  # [..., nh, N, d_h]
        k = self.k_proj(c).view(-1, nh, D // nh).transpose(0, 1)  # [nh, r, d_h]
        v = self.v_proj(c).view(-1, nh, D // nh).transpose(0, 1)  # [nh, r, d_h]
        att = at_least_fp32(q @ k.transpose(1, 2) / math.sqrt(D // nh)).softmax(-1)  # [..., nh, N, r]
        o = self.out_proj((att.to(v.dtype) @ v).transpose(-3, -2).flatten(-2))
        x = x + o
        return x + self.mlp(self.norm_f(x))

    def _pool(self, h, mask):
        h = per_token(self._tokens, h, mask)  # padding rows 0
        w = _mean_weights(mask, h.dtype)
        return torch.bmm(w.unsqueeze(1), h).squeeze(1), w


# ----------------------------------------------------------------------------------------------------------------
# Set Transformer PMA


@dataclass
class PMAConfig(PoolerConfig):
    num_seeds: int = 1  # k: learned seed vectors; z is their outputs concatenated (k * in_dim)
    num_heads: int = 4
    ln: bool = True  # the paper's LayerNorms (the reference code's default is ln=False)


@register_pooler("pma")
class PMAPooling(Pooler):
    """Pooling by Multihead Attention: ``PMA_k(H) = MAB(S, H)`` with ``k`` learned seeds ``S [k, D]``::

        Q = S W_q + b_q    [k, D];     K = H W_k + b_k,  V = H W_v + b_v   [B, L, D]
        A_h = softmax_{j real}(Q_h K_hᵀ / √d_h)       [B, heads, k, L]   (key padding mask)
        O = LN_0(Q + concat_h A_h V_h)               [B, k, D]
        O = LN_1(O + ReLU(O W_o + b_o))              (rFF with residual)
        z = O.reshape(B, k·D)

    The layout (residual on the projected query, rFF = ReLU(Linear)) follows the authors' ``MAB`` code; the
    scale is the usual ``1/√d_h`` (their code divides by ``√D``). Weights returned: ``A`` averaged over heads and
    seeds (sums to 1 over real tokens, 0 on padding).
    """

    Config = PMAConfig

    def __init__(self, in_dim: int, **options):
        super().__init__(in_dim, **options)
        c = self.config
        if c.num_seeds < 1:
            raise ValueError(f"pma: num_seeds must be >= 1, got {c.num_seeds}")
        _check_heads(in_dim, c.num_heads, "pma")
        self.seeds = nn.Parameter(torch.empty(c.num_seeds, in_dim))
        self.q_proj, self.k_proj = nn.Linear(in_dim, in_dim), nn.Linear(in_dim, in_dim)
        self.v_proj, self.rff = nn.Linear(in_dim, in_dim), nn.Linear(in_dim, in_dim)
        self.ln0 = nn.LayerNorm(in_dim) if c.ln else nn.Identity()
        self.ln1 = nn.LayerNorm(in_dim) if c.ln else nn.Identity()
        self.reset_parameters()

    @property
    def out_dim(self) -> int:
        return self.config.num_seeds * self.in_dim

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.seeds)
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def _pool(self, h, mask):
        B, L, D = h.shape
        nh, k = self.config.num_heads, self.config.num_seeds
        q = self.q_proj(self.seeds)  # [k, D]
        qh = q.view(k, nh, D // nh).transpose(0, 1)  # [nh, k, d_h]
        # keys and values of the real tokens only (padding keys are masked out of the softmax)
        kh = per_token(self.k_proj, h, mask, fill=None).view(B, L, nh, D // nh).transpose(1, 2)  # [B, nh, L, d_h]
        vh = per_token(self.v_proj, h, mask).view(B, L, nh, D // nh).transpose(1, 2)
        scores = qh @ kh.transpose(2, 3) / math.sqrt(D // nh)  # [B, nh, k, L]
        att = masked_softmax(scores, mask[:, None, None, :])
        o = q + (att.to(vh.dtype) @ vh).transpose(1, 2).reshape(B, k, D)
        o = self.ln0(o)
        o = self.ln1(o + torch.relu(self.rff(o)))
        return o.reshape(B, k * D), att.mean((1, 2))


# ----------------------------------------------------------------------------------------------------------------
# "no graph" ablation of GLOT


class TokenMLP(TokenLayerStack):
    """Per-token twin of :class:`glotpool.pooling.gnn.TokenGNN`: ``Hᵏ = ReLU(Hᵏ⁻¹ W_k + b_k)``, same jumping knowledge.

    A GCN layer holds exactly one ``[in, out]`` weight and one bias, so this has the same parameter count as
    GLOT-GCN's GNN; it is GLOT-GCN with ``A = I``, minus the degree normalisation. Padding rows are zero.
    """

    layers_name = "lins"

    def __init__(self, in_dim: int, hidden_dim: int = 256, num_layers: int = 2, jk: str = "cat",
                 dropout: float = 0.0):
        super().__init__(in_dim, hidden_dim, num_layers, jk, dropout, nn.Linear)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        layers, h = [x], x
        for lin in self.layers:
            h = torch.relu(per_token(lin, self.dropout(h), mask))  # real tokens only; padding rows 0
            layers.append(h)
        return jumping_knowledge(layers, self.jk)


@dataclass
class MLPAttentionConfig(PoolerConfig):
    hidden_dim: int = 256
    num_layers: int = 2
    jk: str = "cat"
    dropout: float = 0.0
    readout_hidden: int | None = None  # default max(128, out_dim // 2)


@register_pooler("mlp_attention")
class MLPAttentionPooling(Pooler):
    """GLOT without the graph: ``U = TokenMLP(H)`` (same layers/JK as GLOT's GNN), then GLOT's attention readout."""

    Config = MLPAttentionConfig

    def __init__(self, in_dim: int, **options):
        super().__init__(in_dim, **options)
        c = self.config
        self.mlp = TokenMLP(in_dim, c.hidden_dim, c.num_layers, c.jk, c.dropout)
        self.readout = AttentionReadout(self.mlp.out_dim, c.readout_hidden)

    @property
    def out_dim(self) -> int:
        return self.mlp.out_dim

    def _pool(self, h, mask):
        return self.readout(self.mlp(h, mask), mask)


__all__ = ["AdaPool", "LatentAttentionPooling", "PMAPooling", "MLPAttentionPooling", "TokenMLP"]
