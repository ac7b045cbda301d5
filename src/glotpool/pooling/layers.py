"""Dense batched GATv2 convolution (Brody et al., "How Attentive are Graph Attention Networks?", ICLR 2022).

PyG ships ``GATv2Conv`` only for sparse ``edge_index`` input; :mod:`torch_geometric.nn.dense` has GAT, GCN, GIN,
SAGE and GraphConv but no GATv2, so this is ours. Same parameters and maths as PyG's ``GATv2Conv`` with one head,
``share_weights=False``:

    e_ij = aᵀ LeakyReLU(W_dst x_i + b_dst + W_src x_j + b_src)
    α_ij = softmax_{j : A_ij = 1}(e_ij)
    x'_i = Σ_j α_ij (W_src x_j + b_src) + b

Shapes: ``x [B, N, F_in]``, ``adj [B, N, N]`` (``adj[b, i, j] != 0`` ⇔ edge ``j → i``), ``mask [B, N]`` →
``[B, N, F_out]``. Memory is ``O(B·N²·F_out)`` for the pairwise LeakyReLU term (GAT's is ``O(B·N²)``): the price
of GATv2's "dynamic" attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glotpool.pooling.base import at_least_fp32, per_token


def with_self_loops(adj: Tensor, value: float = 1.0) -> Tensor:
    """A copy of ``adj [B, N, N]`` with ``A_ii = value`` on every position (what PyG's ``add_loop=True`` does)."""
    adj = adj.clone()
    idx = torch.arange(adj.shape[-1], device=adj.device)
    adj[:, idx, idx] = value
    return adj


class DenseGATv2Conv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.2, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.negative_slope, self.dropout = negative_slope, dropout
        self.lin_src = nn.Linear(in_channels, out_channels)
        self.lin_dst = nn.Linear(in_channels, out_channels)
        self.att = nn.Parameter(torch.empty(out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.lin_src.weight)
        nn.init.xavier_uniform_(self.lin_dst.weight)
        nn.init.zeros_(self.lin_src.bias)
        nn.init.zeros_(self.lin_dst.bias)
        bound = (6.0 / (1 + self.out_channels)) ** 0.5  # glorot for a [1, F] vector
        nn.init.uniform_(self.att, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adj: Tensor, mask: Tensor | None = None, add_loop: bool = True) -> Tensor:
        if add_loop:
            adj = with_self_loops(adj)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        src = per_token(self.lin_src, x, mask)  # [B, N, F]  (x_j side; real tokens only)
        dst = per_token(self.lin_dst, x, mask)  # [B, N, F]  (x_i side)
        pair = F.leaky_relu(dst.unsqueeze(2) + src.unsqueeze(1), self.negative_slope)  # [B, N(i), N(j), F]
        e = at_least_fp32(pair @ self.att)  # [B, N, N]
        e = e.masked_fill(adj == 0, float("-inf"))
        alpha = F.dropout(e.softmax(dim=-1), p=self.dropout, training=self.training)
        out = alpha.to(src.dtype) @ src + self.bias
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"
