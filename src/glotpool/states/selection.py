"""Which states a pooler sees: a choice of hidden layers and of tokens, the same for the cache and the encoder.

A backbone (or a cache) *holds* K hidden_states indices ``held`` (absolute, 0 = embeddings .. num_layers = the last
layer). A pooler is trained on a selection of them, ``layers``, and on ``tokens``:

- ``layers=None``            every held layer: ``[B, L, D]`` if one is held, else ``[B, L, K, D]``
- ``layers=i`` (an int)      that hidden_states index (negative counts from the end, -1 = the last layer): ``[B, L, D]``
- ``layers=(i, j, ...)``     those, in that order: ``[B, L, len, D]``; ``"all"`` = every index 0..num_layers
- ``tokens="all"``           every real token, prompt included (``last`` pooling = the final token = PromptEOL)
- ``tokens="text"``          only the text's own tokens (for the echo prompt: its second copy); positions and
                             states are unchanged, only the mask shrinks.

:func:`select_states` is the one definition; :meth:`TokenCache.batch` applies the same two parts
(:func:`layer_positions`, :func:`token_mask`) while gathering, so that it reads only the selected layers from disk.
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch

TOKENS = ("all", "text")


def absolute_layer(layer: int, num_layers: int) -> int:
    """hidden_states index (negative allowed) -> ``0..num_layers``; ValueError naming the valid range."""
    n = num_layers + 1  # hidden_states = (embeddings, layer 1, ..., layer num_layers)
    if isinstance(layer, bool):
        raise ValueError(f"a layer must be an int hidden_states index, got {layer!r}")
    try:
        layer = operator.index(layer)
    except TypeError:
        raise ValueError(f"a layer must be an int hidden_states index, got {layer!r}") from None
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} out of range for a model with {num_layers} layers: use -{n}..{n - 1} "
                         f"(0 = embeddings, -1 = {num_layers} = the last layer)")
    return layer % n


def absolute_layers(layers: Sequence[int] | str, num_layers: int) -> tuple[int, ...]:
    """``"all"`` or a non-empty sequence of distinct hidden_states indices -> absolute indices, in that order."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all' or a sequence of hidden_states indices, got {layers!r}")
        return tuple(range(num_layers + 1))
    out = tuple(absolute_layer(x, num_layers) for x in layers)
    if not out:
        raise ValueError("layers is empty: give at least one hidden_states index (or None for the single `layer`)")
    if len(set(out)) != len(out):
        raise ValueError(f"layers {list(layers)} name the same hidden_states index twice (absolute: {list(out)}); "
                         f"give each layer once")
    return out


def layer_positions(held: Sequence[int], layers=None, num_layers: int | None = None) -> tuple[list[int], bool]:
    """Positions in the held-layers axis that ``layers`` selects -> ``(positions, squeeze)``; ``squeeze``: the
    result drops the layers axis (one int, or ``None`` with a single held layer). ValueError for a layer not held."""
    held = tuple(held)
    if layers is None:
        return list(range(len(held))), len(held) == 1
    if num_layers is None:
        raise ValueError("layer_positions needs num_layers to resolve hidden_states indices")
    if isinstance(layers, (list, tuple, str)):
        wanted, squeeze = absolute_layers(layers, num_layers), False
    else:
        wanted, squeeze = (absolute_layer(layers, num_layers),), True
    missing = [x for x in wanted if x not in held]
    if missing:
        raise ValueError(f"hidden_states index(es) {missing} are not held: these states hold layers {list(held)} "
                         f"(of 0..{num_layers}); select among them, or rebuild the cache with --layers including "
                         f"{missing}")
    return [held.index(x) for x in wanted], squeeze


def check_tokens(tokens: str) -> str:
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be 'all' (every real token, prompt included) or 'text' (only the text's "
                         f"tokens inside the prompt), got {tokens!r}")
    return tokens


def token_mask(mask: torch.Tensor, text_mask: torch.Tensor | None, tokens: str = "all") -> torch.Tensor:
    """``mask [B, L]`` (real tokens) or the text mask -> ``[B, L]`` long, on ``mask``'s device. Without a prompt
    the text is every real token, so ``text_mask=None`` means ``mask``."""
    if check_tokens(tokens) == "all" or text_mask is None:
        return mask
    return text_mask.to(device=mask.device, dtype=torch.long)


def select_states(H: torch.Tensor, mask: torch.Tensor, text_mask: torch.Tensor | None, held_layers: Sequence[int],
                  layers=None, tokens: str = "all", *, num_layers: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """States of ``held_layers`` -> the selection ``(layers, tokens)`` a pooler takes (see the module docstring).

    Args:
        H: ``[B, L, D]`` (one held layer) or ``[B, L, K, D]`` (K = ``len(held_layers)``).
        mask: ``[B, L]`` real tokens; text_mask: ``[B, L]`` the pooled text's tokens, or None (no prompt).
    Returns:
        ``(H' [B, L, D] or [B, L, K', D], mask' [B, L] long)``.
    """
    pos, squeeze = layer_positions(held_layers, layers, num_layers)
    mask = token_mask(mask, text_mask, tokens)
    if H.dim() == 3:       # one held layer without a layers axis
        return (H if squeeze else H.unsqueeze(2)), mask
    if pos != list(range(H.shape[2])):
        H = H[:, :, pos]
    return (H.squeeze(2) if squeeze else H), mask


__all__ = ["absolute_layer", "absolute_layers", "layer_positions", "token_mask", "select_states", "check_tokens",
           "TOKENS"]
