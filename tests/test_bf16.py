"""bf16 (#17): one "auto" dtype resolution, recorded resolved; poolers under the trainer's autocast."""
from __future__ import annotations

import pytest
import torch

import glotpool.states.backbone as backbone
from glotpool.pooling.graph import build_graph
from glotpool.states.backbone import cpu_has_bf16, resolve_dtype
from glotpool.training.trainer import autocast
from pooler_helpers import D, make_batch
from glotpool import build_pooler

LEARNED = {"adapool": {}, "glot": dict(hidden_dim=16, tau=0.2), "latent_attention": dict(num_latents=8, num_heads=4),
           "pma": dict(num_heads=4), "mlp_attention": dict(hidden_dim=16)}


def test_resolve_dtype(monkeypatch):
    assert resolve_dtype("float16") == "float16" and resolve_dtype("float32", "cuda") == "float32"
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_bf16() else "float32")
    monkeypatch.setattr(backbone, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(backbone, "cpu_has_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == "float32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8")


def test_autocast_auto_follows_resolve_dtype(monkeypatch):
    for has in (True, False):
        monkeypatch.setattr(backbone, "cpu_has_bf16", lambda has=has: has)
        with autocast("cpu", "auto"):
            assert torch.is_autocast_enabled("cpu") is has
    with pytest.raises(ValueError, match="unknown precision"):
        autocast("cpu", "fp16")


def test_auto_backbone_records_the_resolved_dtype(monkeypatch):
    from glotpool.states.cache import cache_key

    fp32 = backbone.load_backbone("minilm", dtype="float32", device="cpu")
    monkeypatch.setattr(backbone, "cpu_has_bf16", lambda: True)
    auto = backbone.load_backbone("minilm", dtype="auto", device="cpu")
    assert auto.config.dtype == "bfloat16" and auto.fingerprint()["dtype"] == "bfloat16"
    assert next(auto.model.parameters()).dtype == torch.bfloat16
    assert cache_key(auto.fingerprint(), "t", "float16") != cache_key(fp32.fingerprint(), "t", "float16")
    monkeypatch.setattr(backbone, "cpu_has_bf16", lambda: False)
    again = backbone.load_backbone("minilm", dtype="auto", device="cpu")
    assert again.fingerprint() == fp32.fingerprint()  # auto resolved to float32 is the float32 cache


def test_graph_is_fp32_under_autocast():
    h, mask = make_batch([9, 4, 12], seed=1)
    h = h + torch.randn(1, 1, D)
    m = mask.bool()
    want = build_graph(h, m, "threshold", tau=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = build_graph(h, m, "threshold", tau=0.3)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_poolers_under_bf16_autocast(name):
    torch.manual_seed(0)
    pool = build_pooler(name, in_dim=D, **LEARNED[name])
    h, mask = make_batch([9, 4, 12, 2], seed=2)
    z32, w32 = pool(h, mask, return_weights=True)
    with autocast("cpu", "bf16"):
        z, w = pool(h, mask, return_weights=True)
    assert w.dtype == torch.float32  # softmax weights stay fp32
    torch.testing.assert_close(z.float(), z32, atol=0.05, rtol=0.05)
    torch.testing.assert_close(w, w32, atol=0.02, rtol=0.05)
    assert torch.all(w[~mask.bool()] == 0)
    pool.zero_grad()
    with autocast("cpu", "bf16"):
        loss = pool(h, mask).float().pow(2).sum()
    loss.backward()
    grads = [p.grad for p in pool.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in pool.parameters())  # fp32 master weights
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
