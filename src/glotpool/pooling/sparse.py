"""Sparse GLOT for long documents: chunked neighbour search → batched ``edge_index`` → PyG message passing.

The dense path (:mod:`glotpool.pooling.graph` + :class:`glotpool.pooling.gnn.TokenGNN`) holds ``[B, L, L]`` tensors: O(L²) memory,
~0.3 GB per fp32 tensor at L = 8192, and several of them live at once. This path computes the same function with
memory linear in the number of tokens and edges:

1. **Pack.** Real tokens of all sentences are concatenated (padding dropped), in row-major order of the mask:
   ``x [N, D]``, ``batch [N]`` (sentence of each node), ``N = Σ_b n_b``.
2. **Neighbour search** (:func:`chunked_edge_index`). Query rows are processed ``chunk_size`` at a time against *all*
   ``L`` key positions of their sentence, so one step holds ``[chunk, L]`` similarities: O(chunk·L), never L×L.
   Sentences shorter than ``chunk_size`` are processed several at a time (``[chunk // L, L, L]``, same budget).
   The result is a PyG ``edge_index [2, E]`` (row 0 = source ``j``, row 1 = target ``i``) over the packed nodes:
   symmetrised, one self-loop per token, sorted and duplicate-free.
3. **GNN** (:func:`sparse_gnn_forward`): per-edge weights (attention logits → :func:`torch_geometric.utils.softmax`
   over each target's edges, or GCN's degree normalisation) and a chunked weighted aggregation
   (:func:`aggregate`) with its own backward, so no ``[E, F]`` message tensor is kept: O(N·F + E) memory.
4. **Readout** (:func:`sparse_readout`): ``π = softmax(scores, batch)`` per sentence,
   ``z = scatter_sum(π·u, batch)``; the weights are unpacked to ``[B, L]`` (0 on padding), the dense API.

Graph rules (identical edge sets to :func:`glotpool.pooling.graph.build_graph`)
------------------------------------------------------------------------
``knn``        each query row is the *same* row the dense builder ranks: cosine against all ``L`` positions,
               padding ``-inf``, self ``+inf``; ``topk(min(k, L))`` over that full row; picks that land on padding
               (``k`` > real tokens) are dropped. Then ``A ← A ∨ Aᵀ``.

               **Ties.** Every chunk still sees the whole row, so for the same row values this is the same
               ``torch.topk`` call on the same row (length ``L``, same ``k``) and breaks ties among equal cosines
               exactly as the dense path does (which tied index ``topk`` prefers is unspecified, but it is the same
               for the same row). One caveat, measured with this MKL build: a ``[chunk, D] @ [D, L]`` product can
               round the last bit differently from the dense ``[B, L, D] @ [B, D, L]`` one (BLAS picks kernels by
               shape and thread split; 1 ulp was seen for chunk sizes that are not multiples of 4, and with 2
               threads). So the edge sets are identical whenever the cosines are computed exactly (ties from
               repeated tokens or exactly representable states, as in the tests), and otherwise can differ only
               where two candidates, or a cosine and ``tau``, lie within ~1 ulp: near-ties either choice fits.
``threshold``  ``cos(h_i, h_j) > tau`` between real tokens, plus self-loops. **A low ``tau`` gives O(L²) edges**
               (at ``tau`` below every cosine the graph is complete: L² edges, more memory than the dense path,
               since every edge holds an ``F``-vector per layer). ``max_degree`` caps it: each token keeps only its
               ``max_degree`` most similar tokens above ``tau`` (itself included, same top-k rule as ``knn``) before
               symmetrising, so ``E ≤ 2·N·max_degree``. The cap changes the graph, so :class:`~glotpool.GLOTPooling`
               applies it on both paths (the dense path densifies this edge list) to keep them equivalent.
               The dense rule is not symmetrised; cosines are computed by one matmul and are bit-symmetric, so
               symmetrising here adds nothing in practice but guarantees an undirected graph.
``soft``       needs every pair (weighted, complete graph): no sparse form; :class:`~glotpool.GLOTPooling` refuses it.

Cosines are computed exactly like the dense builder (float32, or float64 for float64 states; optional centring).

Message passing: functional, reading the dense layers' own parameters
----------------------------------------------------------------------
:func:`sparse_conv` runs each dense layer of :class:`~glotpool.pooling.gnn.TokenGNN` on an edge list, using *its* weights
(``DenseGATConv``: ``lin``, ``att_src``, ``att_dst``, ``bias``; ``DenseGCNConv``: ``lin``, ``bias``;
``DenseGINConv``: ``nn``, ``eps``; :class:`~glotpool.pooling.layers.DenseGATv2Conv`: ``lin_src``, ``lin_dst``, ``att``,
``bias``). Why functional rather than PyG ``GATConv``/``GCNConv``/... modules tied to the dense parameters: the
parameter shapes differ (``att_src [1, 1, H, C]`` vs ``[1, H, C]``, GIN's MLP is a child module), so tying needs
views re-installed on every call or copies that go stale during training; the PyG modules also add their own
self-loops and caching. Functions hold no state: one trained :class:`~glotpool.GLOTPooling` runs either path, its
``state_dict`` / ``save_pretrained`` are unchanged, and gradients of the sparse path land in the same parameters.
Each function mirrors its dense layer line by line (edge ``j → i`` ⇔ ``A[i, j] = 1``):

    GAT    e_ji = LeakyReLU(a_srcᵀ W x_j + a_dstᵀ W x_i),  α = softmax_{j → i}(e),  x'_i = Σ_j α_ji W x_j + b
    GCN    x'_i = Σ_j d_i^{-1/2} d_j^{-1/2} W x_j + b,      d_i = #edges into i (self-loop included)
    GIN    x'_i = MLP((1 + eps) x_i + Σ_j x_j)              (the sum includes the self-loop, as ``adj @ x`` does)
    GATv2  e_ji = aᵀ LeakyReLU(W_dst x_i + W_src x_j),     x'_i = Σ_j α_ji W_src x_j + b
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.dense import DenseGATConv, DenseGCNConv, DenseGINConv
from torch.utils.checkpoint import checkpoint
from torch_geometric.utils import scatter, softmax, to_undirected

from glotpool.pooling.gnn import CONV_TABLE, TokenGNN, jumping_knowledge
from glotpool.pooling.graph import unit_states
from glotpool.pooling.layers import DenseGATv2Conv
from glotpool.pooling.readout import AttentionReadout

SPARSE_RULES = ("threshold", "knn")
DEFAULT_CHUNK_SIZE = 1024


def sparse_form(conv_name: str):
    """Decorator: register the edge-list form of conv ``conv_name`` in the conv table
    (:data:`glotpool.pooling.gnn.CONV_TABLE`), next to its dense layer."""
    def deco(fn):
        CONV_TABLE[conv_name].sparse = fn
        return fn
    return deco


# ----------------------------------------------------------------------------------------------------------------
# packing: [B, L, ...] with a mask  <->  [N, ...] over real tokens


def pack(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Real tokens of ``h [B, L, D]`` concatenated: ``x [N, D]`` and ``batch [N]`` (row-major order of ``mask``)."""
    batch = mask.nonzero()[:, 0]
    return h[mask], batch


def unpack(values: Tensor, mask: Tensor) -> Tensor:
    """Inverse of :func:`pack` for per-node values ``[N, ...]`` → ``[B, L, ...]`` with zeros at padding."""
    out = values.new_zeros(*mask.shape, *values.shape[1:])
    out[mask] = values
    return out


def node_index(mask: Tensor) -> Tensor:
    """``[B, L]`` long: the packed node id of each real position, -1 at padding."""
    ids = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    ids[mask] = torch.arange(int(mask.sum()), device=mask.device)
    return ids


# ----------------------------------------------------------------------------------------------------------------
# chunked neighbour search


def _blocks(B: int, L: int, chunk_size: int) -> Iterator[tuple[int, int, int, int]]:
    """``(b0, b1, r0, r1)``: sentences ``b0:b1``, query rows ``r0:r1``; at most ``max(chunk_size, L)`` rows each."""
    if L <= chunk_size:
        per = max(1, chunk_size // L)
        for b0 in range(0, B, per):
            yield b0, min(B, b0 + per), 0, L
    else:
        for b in range(B):
            for r0 in range(0, L, chunk_size):
                yield b, b + 1, r0, min(L, r0 + chunk_size)


@torch.no_grad()
def chunked_edge_index(h: Tensor, mask: Tensor, rule: str = "knn", *, tau: float = 0.6, k: int = 8,
                       center: bool = False, max_degree: int | None = None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Token graph of a padded batch as a PyG ``edge_index [2, E]`` over the packed real tokens (see :func:`pack`).

    ``h [B, L, D]``, ``mask [B, L]`` (bool). ``rule`` is ``"knn"`` (``k`` neighbours, self included) or
    ``"threshold"`` (``cos > tau``, optionally capped at ``max_degree`` picks per token). Peak memory per step is
    ``O(chunk_size · L)``; the output is symmetric, has every self-loop and is sorted by (source, target).
    """
    if rule not in SPARSE_RULES:
        raise ValueError(f"the sparse path supports graph rules {', '.join(SPARSE_RULES)}, got {rule!r} (the "
                         "'soft' rule weights every pair, so it has no sparse form; use the dense path)")
    if rule == "knn" and k < 1:
        raise ValueError(f"knn graph needs k >= 1, got k={k}")
    if max_degree is not None and (rule != "threshold" or max_degree < 1):
        raise ValueError(f"max_degree must be None or an int >= 1 and applies to the threshold rule only "
                         f"(knn is capped by k), got max_degree={max_degree!r} with rule={rule!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mask = mask.bool()
    B, L, _ = h.shape
    hn = unit_states(h, mask, center)
    ids = node_index(mask)
    n_nodes = int(mask.sum())
    top = k if rule == "knn" else max_degree  # None: plain threshold
    srcs, dsts = [], []
    for b0, b1, r0, r1 in _blocks(B, L, chunk_size):
        with torch.autocast(h.device.type, enabled=False):  # fp32, as the dense builder
            sim = hn[b0:b1, r0:r1] @ hn[b0:b1].transpose(1, 2)  # [b, c, L]: the dense rows r0:r1, all keys
        keys = mask[b0:b1].unsqueeze(1)  # [b, 1, L]
        rows = mask[b0:b1, r0:r1]  # [b, c]
        row_ids, key_ids = ids[b0:b1, r0:r1], ids[b0:b1]
        is_self = torch.arange(r0, r1, device=h.device).unsqueeze(1) == torch.arange(L, device=h.device)  # [c, L]
        if top is None:  # plain threshold
            hit = (sim > tau) & keys & rows.unsqueeze(-1)
            bi, ri, kj = hit.nonzero(as_tuple=True)
            dsts.append(row_ids[bi, ri])
            srcs.append(key_ids[bi, kj])
            continue
        if rule == "threshold":
            sim.masked_fill_(~(sim > tau), float("-inf"))  # not an edge: never picked (NaN-safe)
        # exactly the dense knn builder's row: padding -inf, self +inf (always among the picks); in place, since
        # these [b, c, L] blocks are the search's peak memory
        sim.masked_fill_(~keys, float("-inf")).masked_fill_(is_self, float("inf"))
        val, idx = sim.topk(min(top, L), dim=-1)  # [b, c, t]
        keep = (val > float("-inf")) & rows.unsqueeze(-1)  # -inf picks: padding (k > n) or below tau
        bi, ri, ti = keep.nonzero(as_tuple=True)
        dsts.append(row_ids[bi, ri])
        srcs.append(key_ids[bi, idx[bi, ri, ti]])
    loops = torch.arange(n_nodes, device=h.device)
    # row i picked j: the dense A[i, j] = 1, i.e. edge j -> i; symmetrising makes the direction moot
    edge_index = torch.stack([torch.cat([*srcs, loops]), torch.cat([*dsts, loops])])
    return to_undirected(edge_index, num_nodes=n_nodes)


def edge_index_to_dense(edge_index: Tensor, mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``A [B, L, L]`` with ``A[b, i, j] = 1`` for every edge ``j → i`` (the dense convention of the convs)."""
    mask = mask.bool()
    pos = mask.nonzero()  # [N, 2]: (sentence, position) of each packed node
    src, dst = edge_index
    adj = torch.zeros(*mask.shape, mask.shape[1], dtype=dtype, device=mask.device)
    adj[pos[dst, 0], pos[dst, 1], pos[src, 1]] = 1
    return adj


def edges_per_graph(edge_index: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Number of (directed) edges of each sentence, self-loops included: ``[B]`` (= the dense ``A.sum((1, 2))``)."""
    return torch.bincount(batch[edge_index[1]], minlength=num_graphs)


# ----------------------------------------------------------------------------------------------------------------
# weighted aggregation without an [E, F] tensor

EDGE_CHUNK_ELEMENTS = 1 << 22  # edges per step × features: 16 MiB of fp32 temporaries


def _edge_chunks(num_edges: int, features: int) -> Iterator[slice]:
    step = max(1, EDGE_CHUNK_ELEMENTS // max(1, features))
    for e0 in range(0, num_edges, step):
        yield slice(e0, min(num_edges, e0 + step))


def _aggregate(w: Tensor, x: Tensor, src: Tensor, dst: Tensor, num_out: int) -> Tensor:
    out = x.new_zeros(num_out, x.shape[1])
    for c in _edge_chunks(src.shape[0], x.shape[1]):
        out.index_add_(0, dst[c], w[c].unsqueeze(-1) * x[src[c]])
    return out


class _WeightedAggregate(torch.autograd.Function):
    """``out_i = Σ_{e : dst_e = i} w_e · x_{src_e}`` (a sparse-dense matmul ``A_w @ x``) in edge chunks.

    PyG's gather → multiply → scatter keeps ``[E, F]`` messages alive (and saved for backward): ~30 edges per
    token × F floats, the largest tensors of the sparse path. Here only ``[chunk, F]`` temporaries exist:
    ``∂x = A_wᵀ @ ∂out`` (the same aggregation with ``src``/``dst`` swapped), ``∂w_e = ⟨∂out_{dst_e}, x_{src_e}⟩``.
    """

    @staticmethod
    def forward(ctx, w: Tensor, x: Tensor, src: Tensor, dst: Tensor, num_out: int) -> Tensor:
        ctx.save_for_backward(w, x, src, dst)
        return _aggregate(w, x, src, dst, num_out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, x, src, dst = ctx.saved_tensors
        grad_w = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = _aggregate(w, grad, dst, src, x.shape[0])
        if ctx.needs_input_grad[0]:
            chunks = _edge_chunks(w.shape[0], x.shape[1])
            grad_w = torch.cat([(grad[dst[c]] * x[src[c]]).sum(-1) for c in chunks])
        return grad_w, grad_x, None, None, None


def aggregate(w: Tensor, x: Tensor, edge_index: Tensor) -> Tensor:
    """``Σ_{j → i} w_ji x_j`` for ``w [E]``, ``x [N, F]`` → ``[N, F]``; memory O(N·F + E), differentiable in both."""
    return _WeightedAggregate.apply(w, x, edge_index[0], edge_index[1], x.shape[0])


def _gatv2_logits(xs: Tensor, xd: Tensor, att: Tensor, src: Tensor, dst: Tensor, slope: float) -> Tensor:
    return F.leaky_relu(xd[dst] + xs[src], slope) @ att


# ----------------------------------------------------------------------------------------------------------------
# message passing with the dense layers' parameters


@sparse_form("gat")
def _sparse_gat(conv: DenseGATConv, x: Tensor, edge_index: Tensor) -> Tensor:
    src, dst = edge_index
    n = x.shape[0]
    H, C = conv.heads, conv.out_channels
    xw = conv.lin(x).view(n, H, C)
    a_src = (xw * conv.att_src.view(1, H, C)).sum(-1)  # [N, H]
    a_dst = (xw * conv.att_dst.view(1, H, C)).sum(-1)
    e = F.leaky_relu(a_src[src] + a_dst[dst], conv.negative_slope)  # [E, H]
    alpha = softmax(e, dst, num_nodes=n)
    alpha = F.dropout(alpha, p=conv.dropout, training=conv.training)
    out = torch.stack([aggregate(alpha[:, i], xw[:, i], edge_index) for i in range(H)], 1)  # [N, H, C]
    out = out.reshape(n, H * C) if conv.concat else out.mean(1)
    return out + conv.bias if conv.bias is not None else out


@sparse_form("gcn")
def _sparse_gcn(conv: DenseGCNConv, x: Tensor, edge_index: Tensor) -> Tensor:
    src, dst = edge_index
    xw = conv.lin(x)
    w = torch.ones(src.shape[0], dtype=xw.dtype, device=x.device)
    if conv.improved:  # dense: A_ii = 2
        w = torch.where(src == dst, 2.0, w)
    deg = scatter(w, dst, dim=0, dim_size=x.shape[0], reduce="sum")  # row sums of A
    dinv = deg.clamp(min=1).pow(-0.5)
    norm = dinv[dst] * w * dinv[src]
    out = aggregate(norm, xw, edge_index)
    return out + conv.bias if conv.bias is not None else out


@sparse_form("gin")
def _sparse_gin(conv: DenseGINConv, x: Tensor, edge_index: Tensor) -> Tensor:
    agg = aggregate(torch.ones_like(edge_index[0], dtype=x.dtype), x, edge_index)  # A @ x (self-loop included)
    return conv.nn((1 + conv.eps) * x + agg)


@sparse_form("gatv2")
def _sparse_gatv2(conv: DenseGATv2Conv, x: Tensor, edge_index: Tensor) -> Tensor:
    src, dst = edge_index
    xs, xd = conv.lin_src(x), conv.lin_dst(x)
    # the logits need an F-vector per edge (GATv2's dynamic attention): computed in edge chunks and, when
    # training, recomputed in backward (checkpoint), so at most [chunk, F] of them exist at a time
    parts = []
    for c in _edge_chunks(src.shape[0], xs.shape[1]):
        args = (xs, xd, conv.att, src[c], dst[c], conv.negative_slope)
        grad = torch.is_grad_enabled() and (xs.requires_grad or conv.att.requires_grad)
        parts.append(checkpoint(_gatv2_logits, *args, use_reentrant=False) if grad else _gatv2_logits(*args))
    e = torch.cat(parts)  # [E]
    alpha = F.dropout(softmax(e, dst, num_nodes=x.shape[0]), p=conv.dropout, training=conv.training)
    return aggregate(alpha, xs, edge_index) + conv.bias


def sparse_conv(conv_name: str, layer: torch.nn.Module, x: Tensor, edge_index: Tensor) -> Tensor:
    """Run a dense layer of :class:`~glotpool.pooling.gnn.TokenGNN` (kind ``conv_name`` of the conv table) on
    ``x [N, F_in]`` and ``edge_index [2, E]``. Equals ``layer(x_dense, A, mask, add_loop=True)`` at the real
    tokens when ``edge_index`` holds every self-loop."""
    form = CONV_TABLE[conv_name].sparse
    if form is None:
        raise ValueError(f"conv {conv_name!r} has no sparse message passing; use sparse=False")
    return form(layer, x, edge_index)


def sparse_gnn_forward(gnn: TokenGNN, x: Tensor, edge_index: Tensor) -> Tensor:
    """:meth:`TokenGNN.forward` on a packed graph: ``x [N, D]`` → ``U [N, gnn.out_dim]``, same parameters."""
    layers, h = [x], x
    for conv in gnn.convs:
        h = torch.relu(sparse_conv(gnn.conv, conv, gnn.dropout(h), edge_index))
        layers.append(h)
    return jumping_knowledge(layers, gnn.jk)


def sparse_readout(readout: AttentionReadout, u: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """:meth:`AttentionReadout.forward` per sentence: ``u [N, F]``, ``batch [N]`` → ``z [B, F]``, ``π [N]``."""
    pi = softmax(readout.scores(u), batch, num_nodes=num_graphs)  # sums to 1 over each sentence's tokens
    z = scatter(pi.unsqueeze(-1) * u, batch, dim=0, dim_size=num_graphs, reduce="sum")
    return z, pi


def sparse_glot(gnn: TokenGNN, readout: AttentionReadout, h: Tensor, mask: Tensor,
                edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """Whole sparse pooling step: ``h [B, L, D]``, ``mask [B, L]``, graph from :func:`chunked_edge_index` →
    ``z [B, out_dim]``, ``weights [B, L]`` (0 on padding)."""
    x, batch = pack(h, mask)
    u = sparse_gnn_forward(gnn, x, edge_index)
    z, pi = sparse_readout(readout, u, batch, h.shape[0])
    return z, unpack(pi, mask)
