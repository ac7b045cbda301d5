"""Token-similarity graphs built from frozen hidden states.

Every rule returns a dense adjacency ``A [B, L, L]`` (float 0/1) that

* has no edge touching a padding position (``mask[b, i] == 0`` ⇒ row and column ``i`` are zero),
* keeps the self-loop of every real token (``A[b, i, i] = 1``), and
* is symmetric.

``threshold`` and ``knn`` are 0/1; ``soft`` has real-valued weights in ``[0, 1]`` off the diagonal.

Rules
-----
``threshold``  ``A_ij = 1  ⇔  cos(h_i, h_j) > tau``   (self-loops follow from ``cos(h_i, h_i) = 1 > tau``; they are
               also set explicitly so ``tau >= 1`` or a zero vector cannot drop them).
``knn``        token ``i`` keeps its ``k`` most similar real tokens (itself included), then ``A ← A ∨ Aᵀ``.
``soft``       dense weighted graph over all real pairs::

                   P_ij = softmax_{j real, j ≠ i}(cos(h_i, h_j) / temperature)     (each row of P sums to 1)
                   A_ij = (P_ij + P_ji) / 2   for i ≠ j,        A_ii = 1

               Why the self term is left out of the softmax and fixed to 1: every conv adds a unit self-loop anyway
               (PyG's ``DenseGCNConv(add_loop=True)`` overwrites ``A_ii`` with 1), and a softmax that included
               ``cos(h_i, h_i) = 1`` would give itself the largest share (≈ 0.9 at temperature 0.1 for 100 tokens
               with typical cosines ≈ 0.3), shrinking the neighbours' total mass by a length-dependent amount.
               So the neighbours of ``i`` carry a total mass of ~1 (exactly 1 before symmetrisation), the same as
               its self-loop. Symmetrising keeps the graph undirected like the other rules. A one-token sentence
               has no neighbours: its row is just the self-loop. Only weight-aware convs (GCN: degree-normalised
               weighted mean; GIN: weighted sum) can use it; GAT/GATv2 treat ``A`` as a 0/1 mask, so
               :class:`~glotpool.GLOTPooling` refuses ``soft`` with them.

``center=True`` subtracts each sentence's mean real-token state before the cosine. Decoder states are strongly
anisotropic (all pairwise cosines near 1), which makes the threshold graph almost complete; centring removes the
shared direction so the threshold measures relative similarity again.

The graph is a function of the (frozen) states and carries no gradient. Similarities are computed in float32, or
in float64 when the states are float64 (half-precision states are upcast), also under bf16 autocast.
"""
from __future__ import annotations

import torch
from torch import Tensor

GRAPH_RULES = ("threshold", "knn", "soft")


@torch.no_grad()
def unit_states(h: Tensor, mask: Tensor, center: bool = False) -> Tensor:
    """Unit-norm token states ``[B, L, D]`` (fp32, or fp64 if given), optionally centred on each sentence's mean
    over real tokens first. The one definition both graph paths use: dense (:func:`cosine_similarity`) and
    sparse (:func:`glotpool.pooling.sparse.chunked_edge_index`) graphs are equal only because they share it."""
    h = h if h.dtype == torch.float64 else h.float()
    if center:
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
        h = h - mean
    return torch.nn.functional.normalize(h, dim=-1, eps=1e-8)


def cosine_similarity(h: Tensor, mask: Tensor, center: bool = False) -> Tensor:
    """Pairwise cosine similarity of tokens. ``h [B, L, D]``, ``mask [B, L]`` (bool) → ``S [B, L, L]``.

    Entries that touch padding are meaningless; callers mask them.
    """
    hn = unit_states(h, mask, center)
    with torch.autocast(hn.device.type, enabled=False):  # fp32 similarities also under bf16 autocast
        return hn @ hn.transpose(1, 2)


def _pair_mask(mask: Tensor) -> Tensor:
    return mask.unsqueeze(2) & mask.unsqueeze(1)  # [B, L, L]: both ends are real tokens


def _with_self_loops(adj: Tensor, mask: Tensor) -> Tensor:
    return adj | torch.diag_embed(mask)


@torch.no_grad()
def threshold_graph(h: Tensor, mask: Tensor, tau: float, center: bool = False) -> Tensor:
    """``A_ij = 1`` iff ``i, j`` are real tokens and ``cos(h_i, h_j) > tau``. Returns float ``[B, L, L]``."""
    sim = cosine_similarity(h, mask, center)
    adj = (sim > tau) & _pair_mask(mask)
    return _with_self_loops(adj, mask).to(h.dtype)


@torch.no_grad()
def knn_graph(h: Tensor, mask: Tensor, k: int, center: bool = False) -> Tensor:
    """Symmetrised k-nearest-neighbour graph over real tokens (self counts as one of the ``k``)."""
    if k < 1:
        raise ValueError(f"knn graph needs k >= 1, got k={k}")
    B, L, _ = h.shape
    sim = cosine_similarity(h, mask, center)
    sim = sim.masked_fill(~mask.unsqueeze(1), float("-inf"))  # never pick a padding neighbour
    # the diagonal is the maximum possible similarity, so self is always among the top-k
    sim = sim.masked_fill(torch.eye(L, dtype=torch.bool, device=h.device), float("inf"))
    idx = sim.topk(min(k, L), dim=-1).indices  # [B, L, k]
    adj = torch.zeros(B, L, L, dtype=torch.bool, device=h.device)
    adj.scatter_(2, idx, True)
    adj = (adj | adj.transpose(1, 2)) & _pair_mask(mask)  # k > #real tokens picked padding: drop those
    return _with_self_loops(adj, mask).to(h.dtype)


@torch.no_grad()
def soft_graph(h: Tensor, mask: Tensor, temperature: float = 0.1, center: bool = False) -> Tensor:
    """Symmetrised softmax-similarity graph (see the module docstring). Returns float ``[B, L, L]``."""
    if not temperature > 0:
        raise ValueError(f"soft graph needs temperature > 0, got temperature={temperature}")
    L = h.shape[1]
    sim = cosine_similarity(h, mask, center) / temperature
    eye = torch.eye(L, dtype=torch.bool, device=h.device)
    neighbour = _pair_mask(mask) & ~eye  # real j ≠ i
    p = sim.masked_fill(~neighbour, float("-inf")).softmax(-1)
    p = p.nan_to_num(0.0)  # rows without any neighbour (padding, one-token sentences) are all -inf -> NaN
    adj = (p + p.transpose(1, 2)) / 2
    adj = adj + torch.diag_embed(mask.to(adj.dtype))
    return adj.to(h.dtype)


@torch.no_grad()
def build_graph(h: Tensor, mask: Tensor, rule: str = "threshold", *, tau: float = 0.6, k: int = 8,
                center: bool = False, temperature: float = 0.1) -> Tensor:
    """Dispatch on ``rule`` (one of :data:`GRAPH_RULES`)."""
    if rule == "threshold":
        return threshold_graph(h, mask, tau, center)
    if rule == "knn":
        return knn_graph(h, mask, k, center)
    if rule == "soft":
        return soft_graph(h, mask, temperature, center)
    raise ValueError(f"unknown graph rule {rule!r}; valid rules: {', '.join(GRAPH_RULES)}")


@torch.no_grad()
def edges_per_token(adj: Tensor, mask: Tensor) -> Tensor:
    """Mean number of neighbours per real token (self-loop included), per sentence: ``[B]``.

    For a weighted (``soft``) graph this is the mean weighted degree (≈ 2: self-loop + unit neighbour mass).
    """
    n = mask.sum(1).clamp_min(1).to(adj.dtype)
    return adj.sum((1, 2)) / n


@torch.no_grad()
def graph_density(adj: Tensor, mask: Tensor) -> Tensor:
    """Fraction of possible real-token pairs that are edges (self-loops included), per sentence: ``[B]``."""
    n = mask.sum(1).clamp_min(1).to(adj.dtype)
    return adj.sum((1, 2)) / (n * n)


@torch.no_grad()
def tau_for_density(h: Tensor, mask: Tensor, density: float, center: bool = False) -> float:
    """The cosine threshold whose graph keeps about ``density`` of the off-diagonal real-token pairs.

    Calibrates τ on a sample of sentences (``h [B, L, D]``, ``mask [B, L]``): the ``1 - density`` quantile of their
    pairwise similarities. Decoder states are anisotropic (cosines crowd near 1), so a fixed τ that gives a sparse
    graph on an encoder gives an almost complete one on a decoder; a density target transfers across backbones.
    """
    if not 0.0 < density < 1.0:
        raise ValueError(f"density must be in (0, 1), got {density}")
    mask = mask.bool()
    sim = cosine_similarity(h, mask, center)
    pairs = _pair_mask(mask) & ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    values = sim[pairs].float()
    if values.numel() == 0:
        raise ValueError("need sentences with at least two real tokens to calibrate tau")
    if values.numel() > 2_000_000:  # torch.quantile's input limit; a random subsample is plenty
        values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]]
    return float(torch.quantile(values, 1.0 - density))
