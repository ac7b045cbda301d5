"""Token-GNN: K dense graph-convolution layers over a batch of token graphs, with jumping knowledge.

    H⁰ = H,   Hᵏ = ReLU(conv_k(Hᵏ⁻¹, A)),   k = 1..K
    jk="cat"  : U = [H⁰ ‖ H¹ ‖ … ‖ Hᴷ]          dim D + K·F   (the paper's choice, default)
    jk="max"  : U = max_k Hᵏ  (k ≥ 1)            dim F
    jk="mean" : U = mean_k Hᵏ (k ≥ 1)            dim F
    jk="last" : U = Hᴷ                           dim F

Shapes: ``x [B, L, D]``, ``adj [B, L, L]`` (0/1, self-loops included), ``mask [B, L]`` (bool) → ``U [B, L, out_dim]``.
Padding rows of every layer's output are zero.

Layers hold the parameters of PyTorch Geometric's dense batched convolutions (one padded tensor per batch, no edge
lists), and their forward is the conv table's ``dense`` form: the same maths as the PyG layer's ``forward``, except
that every per-token linear (the input projection, GIN's MLP) runs on the real tokens only
(:func:`~glotpool.pooling.base.per_token`) and the attention softmax is float32 under bf16 autocast:
``gat`` = :class:`~torch_geometric.nn.dense.DenseGATConv` (one head), ``gcn`` =
:class:`~torch_geometric.nn.dense.DenseGCNConv` (symmetric normalisation), ``gin`` =
:class:`~torch_geometric.nn.dense.DenseGINConv` with a 2-layer MLP (sum aggregation over the graph's neighbours,
self-loop included, plus the ``(1 + eps) x`` self term of GIN). ``gatv2`` has no dense PyG layer, so it uses our
own :class:`~glotpool.pooling.layers.DenseGATv2Conv`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.dense import DenseGATConv, DenseGCNConv, DenseGINConv

from glotpool.pooling.base import at_least_fp32, per_token
from glotpool.pooling.layers import DenseGATv2Conv, with_self_loops

@dataclass
class ConvKind:
    """One row of the conv table: everything glotpool knows about a kind of graph convolution."""

    build: Callable[[int, int], nn.Module]  # (in_dim, out_dim) -> the dense batched layer
    mask_only: bool  # attention convs read A only as a 0/1 mask: a weighted (soft) graph would become complete
    dense: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor] | None = None  # (layer, x [B, L, F], adj, mask)
    # -> [B, L, F'] with self-loops added, padding rows 0; None: the layer's own forward(x, adj, mask, add_loop=True)
    sparse: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None  # (layer, x [N, F], edge_index) -> [N, F']
    # with the dense layer's own parameters; registered by glotpool.pooling.sparse (@sparse_form)


def _gin(in_dim: int, out_dim: int) -> nn.Module:
    return DenseGINConv(nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim)))


def _keep(mask: Tensor, dtype: torch.dtype) -> Tensor:
    return mask.unsqueeze(-1).to(dtype)


def _dense_gat(conv: DenseGATConv, x: Tensor, adj: Tensor, mask: Tensor) -> Tensor:
    """``DenseGATConv.forward(x, adj, mask, add_loop=True)`` with the projection on real tokens only."""
    B, N, _ = x.shape
    H, C = conv.heads, conv.out_channels
    adj = with_self_loops(adj)
    xw = per_token(conv.lin, x, mask).view(B, N, H, C)
    a_src = at_least_fp32((xw * conv.att_src).sum(-1))  # [B, N, H]
    a_dst = at_least_fp32((xw * conv.att_dst).sum(-1))
    alpha = F.leaky_relu(a_src.unsqueeze(1) + a_dst.unsqueeze(2), conv.negative_slope)  # [B, N(i), N(j), H]
    alpha = alpha.masked_fill(adj.unsqueeze(-1) == 0, float("-inf")).softmax(dim=2)
    alpha = F.dropout(alpha, p=conv.dropout, training=conv.training)
    out = torch.matmul(alpha.to(xw.dtype).movedim(3, 1), xw.movedim(2, 1)).movedim(1, 2)  # [B, N, H, C]
    out = out.reshape(B, N, H * C) if conv.concat else out.mean(dim=2)
    if conv.bias is not None:
        out = out + conv.bias
    return out * _keep(mask, out.dtype)


def _dense_gcn(conv: DenseGCNConv, x: Tensor, adj: Tensor, mask: Tensor) -> Tensor:
    """``DenseGCNConv.forward(x, adj, mask, add_loop=True)`` with the projection on real tokens only."""
    adj = with_self_loops(adj, 2.0 if conv.improved else 1.0)
    xw = per_token(conv.lin, x, mask)
    dinv = adj.sum(dim=-1).clamp(min=1).pow(-0.5)
    out = torch.matmul(dinv.unsqueeze(-1) * adj * dinv.unsqueeze(-2), xw)
    if conv.bias is not None:
        out = out + conv.bias
    return out * _keep(mask, out.dtype)


def _dense_gin(conv: DenseGINConv, x: Tensor, adj: Tensor, mask: Tensor) -> Tensor:
    """``DenseGINConv.forward(x, adj, mask, add_loop=True)`` with the MLP on real tokens only."""
    out = (1 + conv.eps) * x + torch.matmul(adj, x)
    return per_token(conv.nn, out, mask)  # padding rows 0


# The conv table: adding a conv is one row here (+ its @sparse_form in sparse.py for long documents).
CONV_TABLE: dict[str, ConvKind] = {
    "gat": ConvKind(lambda i, o: DenseGATConv(i, o, heads=1), mask_only=True, dense=_dense_gat),
    "gcn": ConvKind(DenseGCNConv, mask_only=False, dense=_dense_gcn),
    "gin": ConvKind(_gin, mask_only=False, dense=_dense_gin),
    "gatv2": ConvKind(DenseGATv2Conv, mask_only=True),  # ours: its forward packs already
}
CONVS = tuple(CONV_TABLE)
JK_MODES = ("cat", "max", "mean", "last")


def check_layer_stack(num_layers: int, jk: str) -> None:
    """Validate the depth / jumping-knowledge pair shared by every per-token layer stack."""
    if jk not in JK_MODES:
        raise ValueError(f"unknown jk mode {jk!r}; valid modes: {', '.join(JK_MODES)}")
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    if jk != "cat" and num_layers == 0:
        raise ValueError(f"jk={jk!r} needs num_layers >= 1 (only 'cat' keeps the input)")


def jk_out_dim(in_dim: int, hidden_dim: int, num_layers: int, jk: str) -> int:
    return in_dim + num_layers * hidden_dim if jk == "cat" else hidden_dim


def jumping_knowledge(layers: list[Tensor], jk: str) -> Tensor:
    """Combine ``[H⁰, H¹, …, Hᴷ]`` (each ``[B, L, ·]``) as the docstring above defines."""
    if jk == "cat":
        return torch.cat(layers, dim=-1)
    if jk == "last":
        return layers[-1]
    stacked = torch.stack(layers[1:], dim=0)
    return stacked.max(0).values if jk == "max" else stacked.mean(0)


class TokenLayerStack(nn.Module):
    """K per-token layers ``in_dim -> hidden_dim -> ... -> hidden_dim`` with jumping knowledge over
    ``[H⁰, H¹, …, Hᴷ]``: the shape shared by :class:`TokenGNN` and the graph-free
    :class:`~glotpool.pooling.attention.TokenMLP`. Subclasses build ``self.layers`` and implement ``forward``."""

    layers_name: str = "layers"  # attribute (and state_dict prefix) of the layer list: kept stable for saved weights

    def __init__(self, in_dim: int, hidden_dim: int, num_layers: int, jk: str, dropout: float,
                 make_layer: Callable[[int, int], nn.Module]):
        super().__init__()
        check_layer_stack(num_layers, jk)
        self.in_dim, self.hidden_dim, self.num_layers, self.jk = in_dim, hidden_dim, num_layers, jk
        dims = [in_dim] + [hidden_dim] * num_layers
        setattr(self, self.layers_name, nn.ModuleList(make_layer(dims[i], dims[i + 1]) for i in range(num_layers)))
        self.dropout = nn.Dropout(dropout)

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self, self.layers_name)

    @property
    def out_dim(self) -> int:
        return jk_out_dim(self.in_dim, self.hidden_dim, self.num_layers, self.jk)

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()


class TokenGNN(TokenLayerStack):
    layers_name = "convs"

    def __init__(self, in_dim: int, hidden_dim: int = 256, num_layers: int = 2, conv: str = "gat",
                 jk: str = "cat", dropout: float = 0.0):
        if conv not in CONV_TABLE:
            raise ValueError(f"unknown conv {conv!r}; valid convs: {', '.join(CONVS)}")
        super().__init__(in_dim, hidden_dim, num_layers, jk, dropout, CONV_TABLE[conv].build)
        self.conv = conv  # its row of CONV_TABLE (the sparse path looks its edge-list form up there)

    def forward(self, x: Tensor, adj: Tensor, mask: Tensor) -> Tensor:
        layers = [x]
        h = x
        dense = CONV_TABLE[self.conv].dense
        for conv in self.layers:
            # self-loops: A_ii = 1 on every position: real tokens have that self-loop already, and on padding it
            # keeps GAT's softmax rows finite (an all -inf row is NaN); padding outputs are masked to 0.
            h = self.dropout(h)
            h = torch.relu(dense(conv, h, adj, mask) if dense else conv(h, adj, mask=mask, add_loop=True))
            layers.append(h)
        return jumping_knowledge(layers, self.jk)
