"""Poolers: token states ``H [B, L, D]`` + ``attention_mask [B, L]`` → one vector per sentence ``z [B, out_dim]``.

One small class per pooler, each with a config dataclass, registered by name::

    pool = build_pooler("glot", in_dim=384, hidden_dim=256, num_layers=2, conv="gat", tau=0.6)
    z = pool(hidden_states, attention_mask)                          # [B, pool.out_dim]
    z, w = pool(hidden_states, attention_mask, return_weights=True)  # w [B, L]: each token's share of z
    pool.save_pretrained("dir"); load_pooler("dir")                  # config.json + model.safetensors

Every pooler

* accepts left- or right-padded batches (it only looks at the mask),
* never modifies its inputs,
* is invariant to padding (values at padding positions, even NaN, never reach ``z``),
* raises :class:`ValueError` with a specific message for malformed input.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from glotpool.graph import GRAPH_RULES, build_graph, edges_per_token
from glotpool.gnn import CONVS, JK_MODES, TokenGNN
from glotpool.io_utils import atomic_path, atomic_write_json
from glotpool.readout import AttentionReadout
from glotpool.sparse import (SPARSE_RULES, chunked_edge_index, edge_index_to_dense, edges_per_graph, pack,
                             sparse_glot)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

POOLERS: dict[str, type["Pooler"]] = {}


def register_pooler(name: str):
    """Class decorator: make a pooler available to :func:`build_pooler` / :func:`load_pooler` under ``name``."""

    def deco(cls):
        if name in POOLERS:
            raise ValueError(f"pooler name {name!r} is already registered by {POOLERS[name].__name__}")
        cls.name = name
        POOLERS[name] = cls
        return cls

    return deco


# ----------------------------------------------------------------------------------------------------------------
# input checking


def check_inputs(hidden_states: Tensor, attention_mask: Tensor | None, in_dim: int) -> tuple[Tensor, Tensor]:
    """Validate a batch and return ``(h, mask)`` with ``mask`` bool and padding positions of ``h`` set to 0.

    ``h`` is a new tensor (the caller's is never written to).
    """
    if not isinstance(hidden_states, Tensor):
        raise ValueError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
    if hidden_states.dim() != 3:
        hint = " (a single sentence? use hidden_states.unsqueeze(0))" if hidden_states.dim() == 2 else ""
        raise ValueError(f"hidden_states must have shape [B, L, D], got rank {hidden_states.dim()} "
                         f"shape {tuple(hidden_states.shape)}{hint}")
    if not hidden_states.is_floating_point():
        raise ValueError(f"hidden_states must be a floating tensor, got dtype {hidden_states.dtype}")
    B, L, D = hidden_states.shape
    if D != in_dim:
        raise ValueError(f"hidden_states has feature size D={D} but this pooler was built with in_dim={in_dim}; "
                         f"build it with in_dim={D} (the backbone's hidden size)")
    if B == 0:
        raise ValueError("empty batch: hidden_states has B=0 sentences")
    if attention_mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=hidden_states.device)
    else:
        if not isinstance(attention_mask, Tensor):
            raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != (B, L):
            raise ValueError(f"attention_mask must have shape [B, L] = {(B, L)} to match hidden_states, "
                             f"got {tuple(attention_mask.shape)}")
        if attention_mask.dtype != torch.bool:
            bad = (attention_mask != 0) & (attention_mask != 1)
            if bad.any():
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token); found "
                                 f"{attention_mask[bad][:5].tolist()}")
        mask = attention_mask.to(device=hidden_states.device, dtype=torch.bool)
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"row(s) {empty[:10]} of attention_mask have no real token; every sentence needs at "
                         "least one (drop empty texts before pooling)")
    finite = torch.isfinite(hidden_states).all(-1)  # [B, L]
    if not bool(finite.all()):
        bad_rows = ((~finite) & mask).any(1).nonzero().flatten().tolist()
        if bad_rows:
            raise ValueError(f"hidden_states has NaN/Inf at real tokens of row(s) {bad_rows[:10]}; check the "
                             "backbone's dtype (fp16 overflow?) or the cache")
    h = torch.where(mask.unsqueeze(-1), hidden_states, torch.zeros((), dtype=hidden_states.dtype,
                                                                   device=hidden_states.device))
    return h, mask


def _first_real_index(mask: Tensor) -> Tensor:
    return mask.int().argmax(1)  # argmax returns the first maximum


def _last_real_index(mask: Tensor) -> Tensor:
    L = mask.shape[1]
    return L - 1 - mask.flip(1).int().argmax(1)


# ----------------------------------------------------------------------------------------------------------------
# base class


@dataclass
class PoolerConfig:
    in_dim: int


class Pooler(nn.Module):
    """Base class. Subclasses set ``Config``, implement ``_pool`` and ``out_dim``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = PoolerConfig

    def __init__(self, in_dim: int, **options):
        super().__init__()
        field_names = [f.name for f in dataclasses.fields(self.Config)]
        unknown = sorted(set(options) - set(field_names))
        if unknown:
            valid = ", ".join(f for f in field_names if f != "in_dim") or "(none)"
            raise ValueError(f"unknown option(s) {unknown} for pooler {self.name!r}; valid options: {valid}")
        if not isinstance(in_dim, int) or in_dim < 1:
            raise ValueError(f"in_dim must be a positive int (the backbone's hidden size), got {in_dim!r}")
        self.config = self.Config(in_dim=in_dim, **options)

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def out_dim(self) -> int:
        return self.in_dim

    def _pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                return_weights: bool = False):
        """``hidden_states [B, L, D]``, ``attention_mask [B, L]`` (1 = real token; None = all real).

        Returns ``z [B, out_dim]``, or ``(z, weights [B, L])`` with ``return_weights=True``.
        """
        h, mask = check_inputs(hidden_states, attention_mask, self.in_dim)
        param = next(self.parameters(), None)
        if param is not None and h.dtype != param.dtype:
            h = h.to(param.dtype)
        z, weights = self._pool(h, mask)
        return (z, weights) if return_weights else z

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self.config).items())

    # --- persistence -------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` into folder ``path`` (each file written atomically)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"glotpool_pooler": self.name})
        from glotpool import __version__

        atomic_write_json(path / CONFIG_NAME, {"pooler": self.name, "config": asdict(self.config),
                                               "format_version": FORMAT_VERSION, "glotpool_version": __version__})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "Pooler":
        """Load a pooler saved by :meth:`save_pretrained`. On a subclass, the saved pooler must be of that type."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no pooler at {path}: {CONFIG_NAME} is missing (save one with "
                                    "pooler.save_pretrained(path))")
        meta = json.loads(cfg_file.read_text())
        if "pooler" not in meta or "config" not in meta:
            raise ValueError(f"{cfg_file} is not a glotpool pooler config (keys 'pooler' and 'config' expected)")
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"{cfg_file} has format_version {meta['format_version']}, newer than this glotpool "
                             f"understands ({FORMAT_VERSION}); upgrade glotpool")
        name = meta["pooler"]
        if name not in POOLERS:
            raise ValueError(f"{cfg_file} names unknown pooler {name!r}; known: {', '.join(sorted(POOLERS))}")
        if cls is not Pooler and POOLERS[name] is not cls:
            raise ValueError(f"{path} holds a {name!r} pooler, not {cls.name!r}; load it with "
                             f"glotpool.load_pooler({str(path)!r})")
        cfg = dict(meta["config"])
        pooler = POOLERS[name](**cfg)
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing next to {CONFIG_NAME}")
        state = load_file(str(weights), device=str(map_location))
        missing, unexpected = pooler.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights} does not match the {name!r} config: missing {missing}, "
                             f"unexpected {unexpected}")
        return pooler


# ----------------------------------------------------------------------------------------------------------------
# parameter-free baselines


@register_pooler("mean")
class MeanPooling(Pooler):
    """``z = Σ_i m_i h_i / Σ_i m_i``."""

    def _pool(self, h, mask):
        w = mask.to(h.dtype)
        w = w / w.sum(1, keepdim=True)
        return torch.bmm(w.unsqueeze(1), h).squeeze(1), w


@register_pooler("max")
class MaxPooling(Pooler):
    """Per-dimension maximum over real tokens. Weights: the fraction of dimensions each token wins."""

    def _pool(self, h, mask):
        masked = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))  # out-of-place: the input stays intact
        z, arg = masked.max(1)  # [B, D]
        w = torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
        w.scatter_add_(1, arg, torch.full_like(z, 1.0 / h.shape[-1]))
        return z, w


def _one_hot_pick(h: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    z = h[torch.arange(h.shape[0], device=h.device), idx]
    w = torch.nn.functional.one_hot(idx, h.shape[1]).to(h.dtype)
    return z, w


@register_pooler("cls")
class CLSPooling(Pooler):
    """The first *real* token (``[CLS]`` for BERT-style encoders), correct for left- and right-padded batches."""

    def _pool(self, h, mask):
        return _one_hot_pick(h, _first_real_index(mask))


@register_pooler("last")
class LastTokenPooling(Pooler):
    """The last *real* token (decoders), correct for left- and right-padded batches."""

    def _pool(self, h, mask):
        return _one_hot_pick(h, _last_real_index(mask))


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

    def reset_parameters(self) -> None:
        self.readout.reset_parameters()

    def _pool(self, h, mask):
        return self.readout(h, mask)


@dataclass
class GLOTConfig(PoolerConfig):
    hidden_dim: int = 256  # F: width of every GNN layer
    num_layers: int = 2  # K
    conv: str = "gat"  # gat | gcn | gin | gatv2
    graph: str = "threshold"  # threshold | knn | soft
    tau: float = 0.6  # cosine threshold of the threshold rule
    k: int = 8  # neighbours of the knn rule
    center: bool = False  # subtract the sentence mean before the cosine (anisotropic decoder states)
    temperature: float = 0.1  # softmax temperature of the soft rule (gcn/gin only)
    jk: str = "cat"  # jumping knowledge: cat | max | mean | last
    dropout: float = 0.0
    readout_hidden: int | None = None  # default max(128, out_dim // 2)
    # long documents (glotpool.sparse): False = dense [B, L, L] path; True = sparse edge_index path;
    # "auto" = sparse when the padded length L > sparse_min_length. Same parameters and result either way.
    sparse: bool | str = False
    sparse_min_length: int = 1024
    chunk_size: int = 1024  # query rows per step of the sparse neighbour search: memory O(chunk_size * L)
    max_degree: int | None = None  # threshold rule: keep each token's max_degree most similar (both paths)



@register_pooler("glot")
class GLOTPooling(Pooler):
    """GLOT: token-similarity graph → token GNN with jumping knowledge → attention readout.

    1. ``A = graph(H)``                      ``[B, L, L]``  (:mod:`glotpool.graph`; no gradient)
    2. ``U = [H ‖ H¹ ‖ … ‖ Hᴷ]``              ``[B, L, D + K·F]``  (:class:`glotpool.gnn.TokenGNN`)
    3. ``π = softmax_real(MLP(U))``, ``z = Σ π_i U_i``   ``[B, D + K·F]``  (:class:`glotpool.readout.AttentionReadout`)

    ``sparse=True`` (or ``"auto"`` with ``L > sparse_min_length``) computes the same function without any ``L × L``
    tensor (:mod:`glotpool.sparse`): chunked neighbour search → batched ``edge_index`` → message passing with these
    same parameters. Memory grows ~linearly in L for ``knn`` (and ``threshold`` with ``max_degree``); a low
    ``tau`` without ``max_degree`` can still give O(L²) edges.
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
            if c.conv in ("gat", "gatv2"):
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
        self.gnn = TokenGNN(in_dim, c.hidden_dim, c.num_layers, c.conv, c.jk, c.dropout)
        self.readout = AttentionReadout(self.gnn.out_dim, c.readout_hidden)

    @property
    def out_dim(self) -> int:
        return self.gnn.out_dim

    def reset_parameters(self) -> None:
        self.gnn.reset_parameters()
        self.readout.reset_parameters()

    def uses_sparse(self, length: int) -> bool:
        """Whether a batch padded to ``length`` tokens runs the sparse path."""
        c = self.config
        return c.sparse is True or (c.sparse == "auto" and length > c.sparse_min_length)

    def build_graph(self, h: Tensor, mask: Tensor) -> Tensor:
        """The token graph ``A [B, L, L]`` this pooler uses for a (validated) batch."""
        c = self.config
        if c.max_degree is not None:  # the capped rule is defined by the sparse search; densify its edges
            return edge_index_to_dense(self.build_edge_index(h, mask), mask, dtype=h.dtype)
        return build_graph(h, mask, c.graph, tau=c.tau, k=c.k, center=c.center, temperature=c.temperature)

    def build_edge_index(self, h: Tensor, mask: Tensor) -> Tensor:
        """The same graph as :meth:`build_graph` as ``edge_index [2, E]`` over the packed real tokens
        (:func:`glotpool.sparse.pack`), built in chunks of ``chunk_size`` query rows (no ``L × L`` tensor)."""
        c = self.config
        return chunked_edge_index(h, mask, c.graph, tau=c.tau, k=c.k, center=c.center,
                                  max_degree=c.max_degree, chunk_size=c.chunk_size)

    @torch.no_grad()
    def edges_per_token(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean neighbours per real token (self-loop included) of each sentence's graph: ``[B]``."""
        h, mask = check_inputs(hidden_states, attention_mask, self.in_dim)
        if self.uses_sparse(h.shape[1]):
            _, batch = pack(h, mask)
            edges = edges_per_graph(self.build_edge_index(h, mask), batch, h.shape[0])
            return edges.to(h.dtype) / mask.sum(1).clamp_min(1).to(h.dtype)
        return edges_per_token(self.build_graph(h, mask), mask)

    def _pool(self, h, mask):
        if self.uses_sparse(h.shape[1]):
            return sparse_glot(self.gnn, self.readout, h, mask, self.build_edge_index(h, mask))
        adj = self.build_graph(h, mask)
        u = self.gnn(h, adj, mask)
        return self.readout(u, mask)


# ----------------------------------------------------------------------------------------------------------------
# factory


def build_pooler(name: str, in_dim: int, **options) -> Pooler:
    """Build a registered pooler by name with the same call for all: ``build_pooler(name, in_dim=D, **options)``."""
    if name not in POOLERS:
        raise ValueError(f"unknown pooler {name!r}; valid poolers: {', '.join(sorted(POOLERS))}")
    return POOLERS[name](in_dim=in_dim, **options)


def load_pooler(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Pooler:
    """Load any pooler saved with ``save_pretrained``."""
    return Pooler.from_pretrained(path, map_location=map_location)


def available_poolers() -> list[str]:
    return sorted(POOLERS)


def count_parameters(pooler: Pooler) -> int:
    """Number of trainable parameters of a pooler (0 for the parameter-free baselines)."""
    return pooler.num_trainable_parameters()


# The attention baselines live in their own module; importing it here registers them whenever the registry is
# used (build_pooler / load_pooler). At the bottom, so that module finds every name above already defined.
from glotpool import attention_poolers as _attention_poolers  # noqa: E402, F401
