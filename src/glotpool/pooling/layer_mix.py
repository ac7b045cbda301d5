"""Scalar mix of hidden layers (ELMo, Peters et al., NAACL 2018): one learned weight per layer, softmax-normalised,
and a learned global scale.

    w = softmax(s)                           [K]            (s initialised to 0: uniform weights)
    mix(H) = γ · Σ_k w_k · H[:, :, k]        [B, L, K, D] → [B, L, D]   (γ initialised to 1)

At initialisation the mix is the mean of the K layers. Every pooler built with ``layer_mix=K >= 2`` owns one (its
``state_dict`` keys ``layer_mix.scalars``, ``layer_mix.gamma``: K + 1 parameters) and mixes the K hidden layers of
a frozen backbone before pooling (:class:`glotpool.pooling.base.Pooler`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ScalarMix(nn.Module):
    """Learned convex combination of ``num_layers`` layers of token states, times a learned scale ``γ``.

    Args:
        num_layers: K, the number of layers on the third axis of the input (>= 1).

    Shapes:
        input ``h [B, L, K, D]``; output ``[B, L, D]`` in ``h``'s dtype. The softmax is computed in float32 at
        least (float64 stays float64), also under bf16 autocast.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"ScalarMix: num_layers must be an int >= 1, got {num_layers!r}")
        self.num_layers = num_layers
        self.scalars = nn.Parameter(torch.empty(num_layers))  # s [K]
        self.gamma = nn.Parameter(torch.empty(()))  # γ
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.scalars)
        nn.init.ones_(self.gamma)

    def weights(self) -> Tensor:
        """``softmax(s) [K]``, float32 at least (float64 stays float64; bf16 autocast does not reach it)."""
        s = self.scalars  # base.at_least_fp32, inlined: base imports this module
        return s.to(torch.promote_types(s.dtype, torch.float32)).softmax(0)

    def forward(self, h: Tensor) -> Tensor:
        K = self.num_layers
        if h.dim() != 4 or h.shape[2] != K:
            raise ValueError(f"ScalarMix over {K} layers needs h of shape [B, L, K, D] with K={K}, "
                             f"got {tuple(h.shape)}")
        w = self.weights().to(h.dtype)
        return self.gamma.to(h.dtype) * (h * w.view(K, 1)).sum(2)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}"


__all__ = ["ScalarMix"]
