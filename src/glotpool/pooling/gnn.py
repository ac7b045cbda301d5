"""Token-GNN: K dense graph-convolution layers over a batch of token graphs, with jumping knowledge.

    H⁰ = H,   Hᵏ = ReLU(conv_k(Hᵏ⁻¹, A)),   k = 1..K
    jk="cat"  : U = [H⁰ ‖ H¹ ‖ … ‖ Hᴷ]          dim D + K·F   (the paper's choice, default)
    jk="max"  : U = max_k Hᵏ  (k ≥ 1)            dim F
    jk="mean" : U = mean_k Hᵏ (k ≥ 1)            dim F
    jk="last" : U = Hᴷ                           dim F

Shapes: ``x [B, L, D]``, ``adj [B, L, L]`` (0/1, self-loops included), ``mask [B, L]`` (bool) → ``U [B, L, out_dim]``.
Padding rows of every layer's output are zero.

Layers are PyTorch Geometric's dense batched convolutions (one padded tensor per batch, no edge lists):
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
from torch import Tensor, nn
from torch_geometric.nn.dense import DenseGATConv, DenseGCNConv, DenseGINConv

from glotpool.pooling.layers import DenseGATv2Conv

@dataclass
class ConvKind:
    """One row of the conv table: everything glotpool knows about a kind of graph convolution."""

    build: Callable[[int, int], nn.Module]  # (in_dim, out_dim) -> the dense batched layer
    mask_only: bool  # attention convs read A only as a 0/1 mask: a weighted (soft) graph would become complete
    sparse: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None  # (layer, x [N, F], edge_index) -> [N, F']
    # with the dense layer's own parameters; registered by glotpool.pooling.sparse (@sparse_form)


def _gin(in_dim: int, out_dim: int) -> nn.Module:
    return DenseGINConv(nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim)))


# The conv table: adding a conv is one row here (+ its @sparse_form in sparse.py for long documents).
CONV_TABLE: dict[str, ConvKind] = {
    "gat": ConvKind(lambda i, o: DenseGATConv(i, o, heads=1), mask_only=True),
    "gcn": ConvKind(DenseGCNConv, mask_only=False),
    "gin": ConvKind(_gin, mask_only=False),
    "gatv2": ConvKind(DenseGATv2Conv, mask_only=True),
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
        for conv in self.layers:
            # add_loop=True sets A_ii = 1 on every position: real tokens have that self-loop already, and on
            # padding it keeps GAT's softmax rows finite (an all -inf row is NaN); padding outputs are masked to 0.
            h = torch.relu(conv(self.dropout(h), adj, mask=mask, add_loop=True))
            layers.append(h)
        return jumping_knowledge(layers, self.jk)
