"""Per-sentence *sparse* GLOT: an independent formulation used to check the dense batched module and as the
benchmark baseline.

It does what a straightforward implementation (and the paper's code) does: a Python loop over sentences, each
turned into one PyG graph (``edge_index`` of the real tokens, padding stripped), run through PyG's sparse message
passing layers (``GATConv`` / ``GCNConv`` / ``GINConv`` / ``GATv2Conv``), then an attention readout over that
sentence's tokens. Nothing here is shared with :mod:`glotpool.pooling.graph` / :mod:`glotpool.pooling.gnn` /
:mod:`glotpool.pooling.readout`, so agreement between the two is evidence that both are right.

Slow by design; not for training.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GATv2Conv, GCNConv, GINConv


def threshold_edge_index(x: Tensor, tau: float) -> Tensor:
    """Edges ``(j → i)`` with ``cos(x_i, x_j) > tau`` among one sentence's tokens ``x [n, D]``, self-loops added."""
    n = x.shape[0]
    norms = x.norm(dim=-1).clamp_min(1e-8)
    cos = (x @ x.T) / (norms[:, None] * norms[None, :])
    src, dst = (cos > tau).nonzero(as_tuple=True)
    loops = torch.arange(n, device=x.device)
    edge_index = torch.stack([torch.cat([src, loops]), torch.cat([dst, loops])])
    return torch.unique(edge_index, dim=1)


def _sparse_conv_like(dense_conv: nn.Module, conv: str) -> nn.Module:
    """A PyG sparse layer holding the same weights as a dense layer of :class:`glotpool.pooling.gnn.TokenGNN`."""
    if conv == "gat":
        out_c, in_c = dense_conv.lin.weight.shape
        sparse = GATConv(in_c, out_c, heads=1, add_self_loops=True)
        with torch.no_grad():
            sparse.lin.weight.copy_(dense_conv.lin.weight)
            sparse.att_src.copy_(dense_conv.att_src.view_as(sparse.att_src))
            sparse.att_dst.copy_(dense_conv.att_dst.view_as(sparse.att_dst))
            sparse.bias.copy_(dense_conv.bias)
        return sparse
    if conv == "gcn":
        out_c, in_c = dense_conv.lin.weight.shape
        sparse = GCNConv(in_c, out_c, add_self_loops=True, normalize=True)
        with torch.no_grad():
            sparse.lin.weight.copy_(dense_conv.lin.weight)
            sparse.bias.copy_(dense_conv.bias)
        return sparse
    if conv == "gin":
        sparse = GINConv(copy.deepcopy(dense_conv.nn), eps=float(dense_conv.initial_eps))
        sparse.nn.load_state_dict(dense_conv.nn.state_dict())  # GINConv.__init__ re-initialises its MLP
        return sparse
    if conv == "gatv2":
        out_c, in_c = dense_conv.lin_src.weight.shape
        sparse = GATv2Conv(in_c, out_c, heads=1, add_self_loops=True, share_weights=False)
        with torch.no_grad():
            sparse.lin_l.weight.copy_(dense_conv.lin_src.weight)
            sparse.lin_l.bias.copy_(dense_conv.lin_src.bias)
            sparse.lin_r.weight.copy_(dense_conv.lin_dst.weight)
            sparse.lin_r.bias.copy_(dense_conv.lin_dst.bias)
            sparse.att.copy_(dense_conv.att.view_as(sparse.att))
            sparse.bias.copy_(dense_conv.bias)
        return sparse
    raise ValueError(f"no sparse reference for conv {conv!r}")


class PerSentenceGLOT(nn.Module):
    """GLOT computed one sentence at a time with PyG sparse layers.

    Built either from scratch (``in_dim, hidden_dim, num_layers, conv, tau``) or with :meth:`from_dense`, which
    copies every weight of a :class:`glotpool.GLOTPooling` (threshold graph, ``jk='cat'``).
    """

    def __init__(self, convs: list[nn.Module], readout_w1: nn.Linear, readout_w2: nn.Linear, tau: float):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.w1, self.w2 = readout_w1, readout_w2
        self.tau = tau

    @classmethod
    def from_dense(cls, pool) -> "PerSentenceGLOT":
        c = pool.config
        if c.graph != "threshold" or c.jk != "cat" or c.center:
            raise ValueError("the sparse reference covers graph='threshold', jk='cat', center=False")
        convs = [_sparse_conv_like(conv, c.conv) for conv in pool.gnn.convs]
        return cls(convs, copy.deepcopy(pool.readout.proj), copy.deepcopy(pool.readout.score), c.tau)

    @classmethod
    def fresh(cls, in_dim: int, hidden_dim: int = 256, num_layers: int = 2, conv: str = "gat",
              tau: float = 0.6) -> "PerSentenceGLOT":
        from glotpool.pooling import GLOTPooling

        return cls.from_dense(GLOTPooling(in_dim, hidden_dim=hidden_dim, num_layers=num_layers, conv=conv,
                                          tau=tau))

    def pool_one(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One sentence's real tokens ``x [n, D]`` → ``(z [D + K·F], π [n])``."""
        edge_index = threshold_edge_index(x, self.tau)
        layers, h = [x], x
        for conv in self.convs:
            h = torch.relu(conv(h, edge_index))
            layers.append(h)
        u = torch.cat(layers, dim=-1)
        scores = self.w2(torch.tanh(self.w1(u))).squeeze(-1)
        pi = torch.softmax(scores, dim=0)
        return pi @ u, pi

    def forward(self, hidden_states: Tensor, attention_mask: Tensor, return_weights: bool = False):
        zs, pis = [], []
        for b in range(hidden_states.shape[0]):
            keep = attention_mask[b].bool()
            z, pi = self.pool_one(hidden_states[b][keep])
            full = torch.zeros(hidden_states.shape[1], dtype=pi.dtype, device=pi.device)
            full[keep] = pi
            zs.append(z)
            pis.append(full)
        z = torch.stack(zs)
        return (z, torch.stack(pis)) if return_weights else z
