"""The pooler base: config dataclass, :class:`Pooler` (validation, persistence), input checking and the registry.

Poolers map token states ``H [B, L, D]`` + ``attention_mask [B, L]`` to one vector per sentence ``z [B, out_dim]``.
One small class per pooler, each with a config dataclass, registered by name::

    pool = build_pooler("glot", in_dim=384, hidden_dim=256, num_layers=2, conv="gat", tau=0.6)
    z = pool(hidden_states, attention_mask)                          # [B, pool.out_dim]
    z, w = pool(hidden_states, attention_mask, return_weights=True)  # w [B, L]: each token's share of z
    pool.save_pretrained("dir"); load_pooler("dir")                  # config.json + model.safetensors

    pool = build_pooler("mean", in_dim=576, layer_mix=4)            # K = 4 hidden layers, learned ELMo scalar mix
    z = pool(hidden_states, attention_mask)                          # hidden_states [B, L, 4, 576]

Every pooler

* accepts left- or right-padded batches (it only looks at the mask),
* never modifies its inputs,
* is invariant to padding (values at padding positions, even NaN, never reach ``z``),
* raises :class:`ValueError` with a specific message for malformed input,
* takes the option ``layer_mix=K`` (default 1): with ``K >= 2`` its input is ``H [B, L, K, D]``, K hidden layers of
  the backbone, mixed to ``[B, L, D]`` by a learned :class:`~glotpool.pooling.layer_mix.ScalarMix` (K + 1
  parameters, ``state_dict`` prefix ``layer_mix.``) before the pooler proper runs; ``K = 1`` is the plain pooler.

The concrete poolers live in :mod:`~glotpool.pooling.baselines`, :mod:`~glotpool.pooling.attention` and
:mod:`~glotpool.pooling.glot`; the package ``__init__`` imports all of them, so the registry is complete whenever
this module is reachable.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from glotpool.configured import ConfiguredModule
from glotpool.pooling.layer_mix import ScalarMix

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

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


def check_inputs(hidden_states: Tensor, attention_mask: Tensor | None, in_dim: int,
                 layer_mix: int = 1) -> tuple[Tensor, Tensor]:
    """Validate a batch and return ``(h, mask)`` with ``mask`` bool and padding positions of ``h`` set to 0.

    ``hidden_states`` is ``[B, L, D]``, or ``[B, L, K, D]`` for a pooler built with ``layer_mix=K >= 2`` (K hidden
    layers; padding is zeroed in every layer, and NaN/Inf is refused at a real token of any layer). ``h`` is a new
    tensor (the caller's is never written to).
    """
    if not isinstance(hidden_states, Tensor):
        raise ValueError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
    if layer_mix > 1:
        return _check_layers(hidden_states, attention_mask, in_dim, layer_mix)
    if hidden_states.dim() != 3:
        hint = {2: " (a single sentence? use hidden_states.unsqueeze(0))",
                4: " (K hidden layers? this pooler has layer_mix=1; build it with layer_mix=K)"}
        hint = hint.get(hidden_states.dim(), "")
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


def _check_layers(hidden_states: Tensor, attention_mask: Tensor | None, in_dim: int,
                  layer_mix: int) -> tuple[Tensor, Tensor]:
    """:func:`check_inputs` for ``[B, L, K, D]``: the layer axis is checked here, the rest on ``[B, L, K·D]``."""
    shape = tuple(hidden_states.shape)
    if hidden_states.dim() != 4 or shape[2] != layer_mix:
        hint = (" (one layer? pass all K layers stacked on dim 2, or build the pooler with layer_mix=1)"
                if hidden_states.dim() == 3 else "")
        raise ValueError(f"this pooler was built with layer_mix={layer_mix}: hidden_states must have shape "
                         f"[B, L, K, D] = [B, L, {layer_mix}, {in_dim}], got shape {shape}{hint}")
    B, L, K, D = shape
    if D != in_dim:
        raise ValueError(f"hidden_states has feature size D={D} but this pooler was built with in_dim={in_dim}; "
                         f"build it with in_dim={D} (the backbone's hidden size)")
    h, mask = check_inputs(hidden_states.reshape(B, L, K * D), attention_mask, K * D)
    return h.view(B, L, K, D), mask


def at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 if it is: where bf16 autocast must not reach (softmaxes, similarities)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


PACK_BELOW = 0.9  # per_token packs when fewer than this share of the positions are real tokens


def per_token(fn, x: Tensor, mask: Tensor, fill: float | None = 0.0) -> Tensor:
    """``fn`` (a per-token module: Linear, MLP, ...) applied to the real tokens only: ``fn(x[mask])`` scattered
    back to ``[B, L, ...]``. The one packed-token helper of every pooler's per-token path (GNN input projections,
    GIN's MLP, readout MLP, AdaPool, TokenMLP, latent attention, PMA's key/value projections).

    ``x [B, L, D]``, ``mask [B, L]`` bool. Positions that are padding get ``fill`` (``None``: unspecified, for
    callers that mask them anyway). When nearly every position is real (``>= PACK_BELOW``) the gather/scatter
    costs more than it saves, so ``fn`` runs on the dense tensor; the real tokens' values are the same either way.
    Differentiable (the backward of the gather is a scatter into the same positions).
    """
    if int(mask.sum()) >= PACK_BELOW * mask.numel():
        y = fn(x)
        if fill is None:
            return y
        keep = mask.reshape(*mask.shape, *([1] * (y.dim() - 2)))
        return y.masked_fill(~keep, fill)
    y = fn(x[mask])  # [N, ...]
    out = y.new_full((*mask.shape, *y.shape[1:]), 0.0 if fill is None else fill)
    return out.index_put((mask,), y)  # out of place: autograd routes the gradient to y's rows


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
    layer_mix: int = 1  # K: hidden layers per token, mixed by a learned ScalarMix (1 = input [B, L, D], no mix)


class Pooler(ConfiguredModule):
    """Base class. Subclasses set ``Config``, implement ``_pool`` and ``out_dim``.

    ``forward`` checks the batch, mixes the layers (``layer_mix >= 2``) and calls ``_pool(h [B, L, D], mask)``,
    through :meth:`_pool_layers`, the one hook a pooler overrides to see the unmixed layers (GLOT's graph layer).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "pooler"
    Config: ClassVar[type] = PoolerConfig

    def __init__(self, in_dim: int, **options):
        super().__init__()
        if not isinstance(in_dim, int) or isinstance(in_dim, bool) or in_dim < 1:
            raise ValueError(f"in_dim must be a positive int (the backbone's hidden size), got {in_dim!r}")
        self._configure(self.name, in_dim=in_dim, **options)
        K = self.config.layer_mix
        self.layer_mix = ScalarMix(K) if K > 1 else None  # K = 1: no module, the plain pooler's state_dict

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def out_dim(self) -> int:
        return self.in_dim

    def reset_parameters(self) -> None:
        """Re-initialise every child module that has ``reset_parameters`` (the layer mix included)."""
        for m in self.children():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def _pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _pool_layers(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``h`` as checked (``[B, L, D]``, or ``[B, L, K, D]`` with padding zeroed in every layer) → ``_pool``."""
        return self._pool(self.mix(h), mask)

    def mix(self, h: Tensor) -> Tensor:
        """``h [B, L, K, D]`` → ``γ · Σ_k softmax(s)_k h[:, :, k]`` ``[B, L, D]``; ``h`` itself for ``layer_mix=1``."""
        return h if self.layer_mix is None else self.layer_mix(h)

    def layer_mix_weights(self) -> dict | None:
        """The learned layer mix, ``{"weights": [K floats] (softmax(s), sums to 1), "gamma": γ}``; None for
        ``layer_mix=1``."""
        if self.layer_mix is None:
            return None
        with torch.no_grad():
            return {"weights": self.layer_mix.weights().tolist(), "gamma": float(self.layer_mix.gamma)}

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                return_weights: bool = False):
        """``hidden_states [B, L, D]`` (``[B, L, K, D]`` with ``layer_mix=K >= 2``), ``attention_mask [B, L]``
        (1 = real token; None = all real).

        Returns ``z [B, out_dim]``, or ``(z, weights [B, L])`` with ``return_weights=True``.
        """
        h, mask = check_inputs(hidden_states, attention_mask, self.in_dim, self.config.layer_mix)
        param = next(self.parameters(), None)
        if param is not None and h.dtype != param.dtype:
            h = h.to(param.dtype)
        z, weights = self._pool_layers(h, mask)
        return (z, weights) if return_weights else z

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self.config).items())

    # --- persistence -------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` into folder ``path`` (each file written atomically)."""
        self._save(path, CONFIG_NAME, WEIGHTS_NAME, {"pooler": self.name}, {"glotpool_pooler": self.name})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu",
                        revision: str | None = None, subfolder: str | None = None) -> "Pooler":
        """Load a pooler saved by :meth:`save_pretrained`: a folder, or a Hub repo id (``revision``: branch, tag or
        commit; ``subfolder``: a folder inside it). On a subclass, the saved pooler must be of that type."""
        from glotpool.hub import resolve_folder

        path = resolve_folder(path, revision, subfolder, what="pooler")
        meta = cls._read_config(path, CONFIG_NAME, "pooler", ("pooler", "config"), "pooler.save_pretrained(path)")
        name = meta["pooler"]
        if name not in POOLERS:
            raise ValueError(f"{path / CONFIG_NAME} names unknown pooler {name!r}; known: {', '.join(sorted(POOLERS))}")
        if cls is not Pooler and POOLERS[name] is not cls:
            raise ValueError(f"{path} holds a {name!r} pooler, not {cls.name!r}; load it with "
                             f"glotpool.load_pooler({str(path)!r})")
        try:
            pooler = POOLERS[name](**dict(meta["config"]))
        except (TypeError, ValueError) as e:  # a hand-edited config: name the file
            raise ValueError(f"{path / CONFIG_NAME}: {e}; restore the original file or re-save the pooler") from None
        pooler._load_weights(path / WEIGHTS_NAME, map_location, meta)
        return pooler


# ----------------------------------------------------------------------------------------------------------------
# factory


def build_pooler(name: str, in_dim: int, **options) -> Pooler:
    """Build a registered pooler by name with the same call for all: ``build_pooler(name, in_dim=D, **options)``."""
    if name not in POOLERS:
        raise ValueError(f"unknown pooler {name!r}; valid poolers: {', '.join(sorted(POOLERS))}")
    return POOLERS[name](in_dim=in_dim, **options)


def check_pooler_options(name: str, **options) -> None:
    """ValueError for an unknown pooler, an unknown option or an option value of the wrong type / range, without
    building anything (no in_dim needed): what a CLI checks before it loads a backbone."""
    from glotpool.configured import check_config

    if name not in POOLERS:
        raise ValueError(f"unknown pooler {name!r}; valid poolers: {', '.join(sorted(POOLERS))}")
    import dataclasses

    cfg = POOLERS[name].Config
    names = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        valid = ", ".join(n for n in names if n != "in_dim") or "(none)"
        raise ValueError(f"unknown option(s) {unknown} for pooler {name!r}; valid options: {valid}")
    check_config(cfg, options, f"pooler {name!r}")


def load_pooler(path: str | os.PathLike, map_location: str | torch.device = "cpu", revision: str | None = None,
                subfolder: str | None = None) -> Pooler:
    """Load any pooler saved with ``save_pretrained`` (a folder or a Hub repo id)."""
    return Pooler.from_pretrained(path, map_location=map_location, revision=revision, subfolder=subfolder)


def available_poolers() -> list[str]:
    return sorted(POOLERS)


def count_parameters(pooler: Pooler) -> int:
    """Number of trainable parameters of a pooler (0 for the parameter-free baselines)."""
    return pooler.num_trainable_parameters()
