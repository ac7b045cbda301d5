"""Packed tokens (#17): every per-token module runs on the real tokens only, with the dense path's result."""
from __future__ import annotations

import pytest
import torch

import glotpool.pooling.base as base
from glotpool.pooling.base import per_token
from glotpool.pooling.gnn import CONV_TABLE
from pooler_helpers import D, make, make_batch

LEARNED = ["adapool", "glot", "latent_attention", "pma", "mlp_attention"]
CONVS = ["gat", "gcn", "gin", "gatv2"]


def _options(name, conv="gat"):
    if name == "glot":
        return dict(hidden_dim=8, num_layers=2, conv=conv, tau=0.1)
    if name == "latent_attention":
        return dict(num_latents=8, num_heads=4)
    if name == "pma":
        return dict(num_seeds=2, num_heads=4)
    if name == "mlp_attention":
        return dict(hidden_dim=8, num_layers=2)
    return {}


def _run(pool, h, mask, pack: bool, monkeypatch):
    monkeypatch.setattr(base, "PACK_BELOW", 2.0 if pack else 0.0)  # always / never pack
    pool.zero_grad(set_to_none=True)
    z, w = pool(h, mask, return_weights=True)
    z.pow(2).sum().backward()
    return z.detach(), w.detach(), {n: p.grad.clone() for n, p in pool.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,conv", [(n, "gat") for n in LEARNED] + [("glot", c) for c in CONVS[1:]])
@pytest.mark.parametrize("left_pad", [False, True])
def test_packed_equals_dense_padding_heavy(name, conv, left_pad, monkeypatch):
    pool = make(name, seed=3, **_options(name, conv))
    h, mask = make_batch([2, 11, 1, 5], L=11, seed=4, left_pad=left_pad, dtype=torch.float64)  # 43 % real
    h = h + 0.8 * torch.randn(1, 1, D, dtype=torch.float64)
    zd, wd, gd = _run(pool, h, mask, False, monkeypatch)
    zp, wp, gp = _run(pool, h, mask, True, monkeypatch)
    torch.testing.assert_close(zp, zd, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(wp, wd, atol=1e-10, rtol=1e-9)
    assert gd.keys() == gp.keys() and gd
    for n in gd:
        torch.testing.assert_close(gp[n], gd[n], atol=1e-9, rtol=1e-8, msg=n)


@pytest.mark.parametrize("conv", CONVS)
def test_dense_form_equals_pyg_layer(conv, monkeypatch):
    """The conv table's dense forms are the PyG layers' forward(x, adj, mask, add_loop=True), packed or not."""
    torch.manual_seed(0)
    layer = CONV_TABLE[conv].build(D, 6).double()
    h, mask = make_batch([3, 7, 5], L=7, seed=1, dtype=torch.float64)
    m = mask.bool()
    adj = (torch.rand(3, 7, 7, dtype=torch.float64) > 0.5).double() * (m[:, :, None] & m[:, None, :])
    x = h * m[..., None]
    want = layer(x, adj, mask=m, add_loop=True)
    dense = CONV_TABLE[conv].dense or (lambda c, x, a, mk: c(x, a, mask=mk, add_loop=True))
    for pack in (False, True):
        monkeypatch.setattr(base, "PACK_BELOW", 2.0 if pack else 0.0)
        got = dense(layer, x, adj, m)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        assert torch.all(got[~m] == 0)


def test_per_token_fill_and_shapes():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    lin = torch.nn.Linear(3, 5)
    y = per_token(lin, x, mask)
    assert y.shape == (2, 4, 5) and torch.all(y[~mask] == 0)
    torch.testing.assert_close(y[mask], lin(x[mask]))
    s = per_token(lambda t: t.sum(-1), x, mask, fill=float("-inf"))
    assert s.shape == (2, 4) and torch.all(s[~mask] == float("-inf"))
    full = torch.ones(2, 4, dtype=torch.bool)  # all real: runs dense, same values
    torch.testing.assert_close(per_token(lin, x, full), lin(x))
