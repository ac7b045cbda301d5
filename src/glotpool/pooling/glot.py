"""GLOT pooling (Mantri et al., ICLR 2026): token-similarity graph → token GNN → attention readout."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from glotpool.pooling.base import Pooler, PoolerConfig, check_inputs, register_pooler
from glotpool.pooling.gnn import CONV_TABLE, CONVS, JK_MODES, TokenGNN
from glotpool.pooling.graph import GRAPH_RULES, build_graph, edges_per_token, tau_for_density
from glotpool.pooling.readout import AttentionReadout
from glotpool.pooling.sparse import (SPARSE_RULES, chunked_edge_index, edge_index_to_dense, edges_per_graph, pack,
                                     sparse_glot)


@dataclass
class GLOTConfig(PoolerConfig):
    hidden_dim: int = 256  # F: width of every GNN layer
    num_layers: int = 2  # K
    conv: str = "gat"  # gat | gcn | gin | gatv2
    graph: str = "threshold"  # threshold | knn | soft
    tau: float | None = 0.6  # cosine threshold of the threshold rule (None until calibrated, see target_density)
    target_density: float | None = None  # choose tau for this edge density on training states: calibrate_tau()
    k: int = 8  # neighbours of the knn rule
    center: bool = False  # subtract the sentence mean before the cosine (anisotropic decoder states)
    temperature: float = 0.1  # softmax temperature of the soft rule (gcn/gin only)
    jk: str = "cat"  # jumping knowledge: cat | max | mean | last
    dropout: float = 0.0
    readout_hidden: int | None = None  # default max(128, out_dim // 2)
    # long documents (glotpool.pooling.sparse): False = dense [B, L, L] path; True = sparse edge_index path;
    # "auto" = sparse when the padded length L > sparse_min_length. Same parameters and result either way.
    sparse: bool | str = False
    sparse_min_length: int = 1024
    chunk_size: int = 1024  # query rows per step of the sparse neighbour search: memory O(chunk_size * L)
    max_degree: int | None = None  # threshold rule: keep each token's max_degree most similar (both paths)
    # layer_mix=K >= 2: the layer (0..K-1, negative from the last) whose states build the graph; None = the mix
    graph_layer: int | None = None

    RANGES = {"graph_layer": (None, None, False)}  # any int; checked against layer_mix by GLOTPooling


@register_pooler("glot")
class GLOTPooling(Pooler):
    """GLOT: token-similarity graph → token GNN with jumping knowledge → attention readout.

    1. ``A = graph(H)``                      ``[B, L, L]``  (:mod:`glotpool.pooling.graph`; no gradient)
    2. ``U = [H ‖ H¹ ‖ … ‖ Hᴷ]``              ``[B, L, D + K·F]``  (:class:`glotpool.pooling.gnn.TokenGNN`)
    3. ``π = softmax_real(MLP(U))``, ``z = Σ π_i U_i``   ``[B, D + K·F]``  (:class:`glotpool.pooling.readout.AttentionReadout`)

    ``sparse=True`` (or ``"auto"`` with ``L > sparse_min_length``) computes the same function without any ``L × L``
    tensor (:mod:`glotpool.pooling.sparse`): chunked neighbour search → batched ``edge_index`` → message passing with these
    same parameters. Memory grows ~linearly in L for ``knn`` (and ``threshold`` with ``max_degree``); a low
    ``tau`` without ``max_degree`` can still give O(L²) edges.

    ``layer_mix=K >= 2`` (input ``H [B, L, K, D]``): the GNN and the readout run on the learned mix of the K layers
    (:class:`~glotpool.pooling.layer_mix.ScalarMix`); the graph is built from layer ``graph_layer`` of ``H``
    (``H[:, :, graph_layer]``), or from the mix itself with ``graph_layer=None``, on both paths. A graph from the
    mix moves as the mix trains; ``calibrate_tau`` sees the mix at the time it is called.
    """

    Config = GLOTConfig

    def __init__(self, in_dim: int, **options):
        super().__init__(in_dim, **options)
        c = self.config
        if c.conv not in CONVS:
            raise ValueError(f"unknown conv {c.conv!r}; valid convs: {', '.join(CONVS)}")
        if c.graph not in GRAPH_RULES:
            raise ValueError(f"unknown graph rule {c.graph!r}; valid rules: {', '.join(GRAPH_RULES)}")
        if c.jk not in JK_MODES:
            raise ValueError(f"unknown jk mode {c.jk!r}; valid modes: {', '.join(JK_MODES)}")
        if c.graph == "knn" and c.k < 1:
            raise ValueError(f"graph='knn' needs k >= 1, got k={c.k}")
        if c.graph == "soft":
            if not c.temperature > 0:
                raise ValueError(f"graph='soft' needs temperature > 0, got temperature={c.temperature}")
            if CONV_TABLE[c.conv].mask_only:
                # GAT's attention only reads A as a 0/1 mask: soft weights would silently become a complete graph
                raise ValueError(f"graph='soft' gives weighted edges, which conv={c.conv!r} cannot use (GAT "
                                 "attention treats the adjacency as a 0/1 mask); use conv='gcn' or conv='gin', "
                                 "or a 0/1 rule (graph='threshold' or 'knn') with GAT")
        if not (c.sparse is True or c.sparse is False or c.sparse == "auto"):  # not 0/1: bools only
            raise ValueError(f"sparse must be False, True or 'auto', got {c.sparse!r}")
        if c.sparse is not False and c.graph not in SPARSE_RULES:
            raise ValueError(f"sparse={c.sparse!r} needs graph='knn' or 'threshold': graph={c.graph!r} weights "
                             "every token pair, so it has no sparse form (use sparse=False)")
        for name in ("sparse_min_length", "chunk_size"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if c.max_degree is not None:
            if c.graph != "threshold":
                raise ValueError(f"max_degree caps the threshold rule; graph={c.graph!r} does not use it "
                                 "(knn is capped by k): leave max_degree=None")
            if isinstance(c.max_degree, bool) or not isinstance(c.max_degree, int) or c.max_degree < 1:
                raise ValueError(f"max_degree must be None or an int >= 1, got {c.max_degree!r}")
        if c.target_density is not None:
            if isinstance(c.target_density, bool) or not 0.0 < c.target_density < 1.0:
                raise ValueError(f"target_density must be in (0, 1), got {c.target_density!r}")
            if c.graph != "threshold":
                raise ValueError(f"target_density calibrates the threshold rule's tau; graph={c.graph!r} does not "
                                 "use tau (leave target_density=None)")
            if "tau" not in options:
                c.tau = None  # not calibrated yet: forward refuses until calibrate_tau() runs
        if c.graph_layer is not None:
            if c.layer_mix == 1:
                raise ValueError(f"graph_layer={c.graph_layer} picks one of the layer_mix hidden layers for the "
                                 "graph, but layer_mix=1 (one layer): leave graph_layer=None or set layer_mix=K")
            if not -c.layer_mix <= c.graph_layer < c.layer_mix:
                raise ValueError(f"graph_layer={c.graph_layer} is out of range for layer_mix={c.layer_mix}: use "
                                 f"0..{c.layer_mix - 1}, or -{c.layer_mix}..-1 counted from the last layer")
        self.gnn = TokenGNN(in_dim, c.hidden_dim, c.num_layers, c.conv, c.jk, c.dropout)
        self.readout = AttentionReadout(self.gnn.out_dim, c.readout_hidden)

    @property
    def out_dim(self) -> int:
        return self.gnn.out_dim

    def uses_sparse(self, length: int) -> bool:
        """Whether a batch padded to ``length`` tokens runs the sparse path."""
        c = self.config
        return c.sparse is True or (c.sparse == "auto" and length > c.sparse_min_length)

    @torch.no_grad()
    def calibrate_tau(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> float:
        """Set ``tau`` to the threshold that keeps ``target_density`` of the token pairs of these (training)
        sentences' graphs; returns it. Never calibrate on test data."""
        c = self.config
        if c.target_density is None:
            raise ValueError("calibrate_tau needs target_density (e.g. build_pooler('glot', target_density=0.05))")
        h, mask = check_inputs(hidden_states, attention_mask, self.in_dim, c.layer_mix)
        c.tau = round(tau_for_density(self.graph_states(h), mask, c.target_density, c.center), 4)
        return c.tau

    def graph_states(self, h: Tensor, mixed: Tensor | None = None) -> Tensor:
        """The token states ``[B, L, D]`` the graph is built from, for a checked batch: ``h [B, L, D]`` itself;
        ``h [B, L, K, D]`` (``layer_mix=K``): ``h[:, :, graph_layer]``, or with ``graph_layer=None`` the mix
        ``self.mix(h)`` (``mixed``: that mix, when the caller has it already)."""
        K = self.config.layer_mix
        if h.dim() == 3:
            return h
        if K == 1 or h.dim() != 4 or h.shape[2] != K:
            raise ValueError(f"graph states: expected [B, L, D] or [B, L, K, D] with K = layer_mix = {K}, got "
                             f"shape {tuple(h.shape)}")
        if self.config.graph_layer is not None:
            return h[:, :, self.config.graph_layer]
        return self.mix(h) if mixed is None else mixed

    @torch.no_grad()
    def build_graph(self, h: Tensor, mask: Tensor) -> Tensor:
        """The token graph ``A [B, L, L]`` this pooler uses for a (validated) batch: ``h [B, L, D]``, or
        ``[B, L, K, D]`` (``layer_mix=K``; built from :meth:`graph_states`)."""
        c = self.config
        h = self.graph_states(h)
        if c.graph == "threshold" and c.tau is None:
            raise ValueError(f"tau is not calibrated (target_density={c.target_density}): call "
                             "pooler.calibrate_tau(train_states, train_mask) before pooling")
        if c.max_degree is not None:  # the capped rule is defined by the sparse search; densify its edges
            return edge_index_to_dense(self.build_edge_index(h, mask), mask, dtype=h.dtype)
        return build_graph(h, mask, c.graph, tau=c.tau, k=c.k, center=c.center, temperature=c.temperature)

    @torch.no_grad()
    def build_edge_index(self, h: Tensor, mask: Tensor) -> Tensor:
        """The same graph as :meth:`build_graph` as ``edge_index [2, E]`` over the packed real tokens
        (:func:`glotpool.pooling.sparse.pack`), built in chunks of ``chunk_size`` query rows (no ``L × L`` tensor)."""
        c = self.config
        h = self.graph_states(h)
        if c.graph == "threshold" and c.tau is None:
            raise ValueError(f"tau is not calibrated (target_density={c.target_density}): call "
                             "pooler.calibrate_tau(train_states, train_mask) before pooling")
        return chunked_edge_index(h, mask, c.graph, tau=c.tau, k=c.k, center=c.center,
                                  max_degree=c.max_degree, chunk_size=c.chunk_size)

    @torch.no_grad()
    def edges_per_token(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean neighbours per real token (self-loop included) of each sentence's graph: ``[B]``."""
        h, mask = check_inputs(hidden_states, attention_mask, self.in_dim, self.config.layer_mix)
        h = self.graph_states(h)
        if self.uses_sparse(h.shape[1]):
            _, batch = pack(h, mask)
            edges = edges_per_graph(self.build_edge_index(h, mask), batch, h.shape[0])
            return edges.to(h.dtype) / mask.sum(1).clamp_min(1).to(h.dtype)
        return edges_per_token(self.build_graph(h, mask), mask)

    def _pool_layers(self, h, mask):
        x = self.mix(h)
        return self._pool(x, mask, graph_states=self.graph_states(h, mixed=x))

    def _pool(self, h, mask, graph_states: Tensor | None = None):
        """GNN and readout on ``h [B, L, D]``; the graph from ``graph_states [B, L, D]`` (default ``h``)."""
        g = h if graph_states is None else graph_states
        if self.uses_sparse(h.shape[1]):
            return sparse_glot(self.gnn, self.readout, h, mask, self.build_edge_index(g, mask))
        adj = self.build_graph(g, mask)
        u = self.gnn(h, adj, mask)
        return self.readout(u, mask)
