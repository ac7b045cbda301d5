"""Attention baselines, the graph-free GLOT ablation and the soft graph rule, each against an independent
per-sentence formulation (the shared invariance / persistence / error tests live in test_poolers.py)."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from glotpool import build_pooler, count_parameters, load_pooler
from glotpool.pooling.graph import GRAPH_RULES, build_graph, edges_per_token
from pooler_helpers import D, make
from pooler_helpers import make_batch as _make_batch

make_batch = partial(_make_batch, dtype=torch.float64)  # these checks compare against float64 hand formulas


def real_tokens(h, mask):
    return [h[b][mask[b].bool()] for b in range(h.shape[0])]


# ---------------------------------------------------------------------------------------------------------------
# latent_attention


def test_latent_attention_matches_torch_multihead_attention_per_sentence():
    pool = make("latent_attention", num_latents=7, num_heads=4, mlp_hidden=10)
    mha = torch.nn.MultiheadAttention(D, 4, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([pool.q_proj.weight, pool.k_proj.weight, pool.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]))
        mha.out_proj.weight.copy_(pool.out_proj.weight)
        mha.out_proj.bias.copy_(pool.out_proj.bias)
    h, mask = make_batch([5, 1, 8], L=9, seed=3)
    z, w = pool(h, mask, return_weights=True)
    lat = F.layer_norm(pool.latents, (D,), pool.norm_c.weight, pool.norm_c.bias)
    for b, x in enumerate(real_tokens(h, mask)):
        q = F.layer_norm(x, (D,), pool.norm_q.weight, pool.norm_q.bias)
        o, _ = mha(q[None], lat[None], lat[None])
        x1 = x + o[0]
        x2 = x1 + pool.mlp(F.layer_norm(x1, (D,), pool.norm_f.weight, pool.norm_f.bias))
        torch.testing.assert_close(z[b], x2.mean(0), atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(w[b], mask[b].double() / mask[b].sum())


def test_latent_attention_defaults_follow_nv_embed():
    pool = build_pooler("latent_attention", in_dim=32)
    assert pool.latents.shape == (512, 32) and pool.config.num_heads == 8
    assert pool.mlp[0].out_features == 4 * 32 and isinstance(pool.mlp[1], torch.nn.GELU)
    assert pool.out_dim == 32


# ---------------------------------------------------------------------------------------------------------------
# pma


@pytest.mark.parametrize("ln", [True, False])
def test_pma_matches_manual_per_sentence_math(ln):
    k, nh = 3, 2
    pool = make("pma", num_seeds=k, num_heads=nh, ln=ln)
    h, mask = make_batch([4, 1, 7], L=9, seed=5, left_pad=True)
    z, w = pool(h, mask, return_weights=True)
    assert z.shape == (3, k * D) and pool.out_dim == k * D
    dh = D // nh
    for b, x in enumerate(real_tokens(h, mask)):
        n = x.shape[0]
        q = pool.seeds @ pool.q_proj.weight.T + pool.q_proj.bias
        key = x @ pool.k_proj.weight.T + pool.k_proj.bias
        val = x @ pool.v_proj.weight.T + pool.v_proj.bias
        out = torch.zeros(k, D, dtype=x.dtype)
        att_sum = torch.zeros(n, dtype=x.dtype)
        for s in range(k):
            for hd in range(nh):
                sl = slice(hd * dh, (hd + 1) * dh)
                logits = torch.stack([q[s, sl] @ key[j, sl] / math.sqrt(dh) for j in range(n)])
                a = logits.exp() / logits.exp().sum()
                out[s, sl] = q[s, sl] + sum(a[j] * val[j, sl] for j in range(n))
                att_sum += a
        if ln:
            out = F.layer_norm(out, (D,), pool.ln0.weight, pool.ln0.bias)
        out = out + torch.relu(out @ pool.rff.weight.T + pool.rff.bias)
        if ln:
            out = F.layer_norm(out, (D,), pool.ln1.weight, pool.ln1.bias)
        torch.testing.assert_close(z[b], out.reshape(-1), atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(w[b][mask[b].bool()], att_sum / (k * nh), atol=1e-12, rtol=1e-10)
        assert torch.all(w[b][~mask[b].bool()] == 0)


# ---------------------------------------------------------------------------------------------------------------
# weighted_mean


def test_weighted_mean_hand_computation_and_padding_side():
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [9.0, 9.0]]])  # 3 real tokens, then padding
    mask = torch.tensor([[1, 1, 1, 0]])
    pool = build_pooler("weighted_mean", in_dim=2)
    z, w = pool(h, mask, return_weights=True)
    # weights 1/6, 2/6, 3/6 -> z = (1*[1,0] + 2*[0,1] + 3*[3,3]) / 6 = [10/6, 11/6]
    torch.testing.assert_close(w, torch.tensor([[1 / 6, 2 / 6, 3 / 6, 0.0]]))
    torch.testing.assert_close(z, torch.tensor([[10 / 6, 11 / 6]]))
    left_h = torch.cat([h[:, 3:], h[:, :3]], 1)  # the same sentence left-padded
    left_mask = torch.tensor([[0, 1, 1, 1]])
    torch.testing.assert_close(pool(left_h, left_mask), z)


def test_weighted_mean_is_position_dependent():
    h, mask = make_batch([5], seed=2)
    pool = build_pooler("weighted_mean", in_dim=D)
    assert not torch.allclose(pool(h, mask), pool(h.flip(1), mask))


# ---------------------------------------------------------------------------------------------------------------
# mlp_attention


@pytest.mark.parametrize("jk", ["cat", "max", "mean", "last"])
def test_mlp_attention_matches_manual(jk):
    pool = make("mlp_attention", hidden_dim=6, num_layers=3, jk=jk, readout_hidden=5)
    h, mask = make_batch([4, 2, 6], seed=8)
    z, w = pool(h, mask, return_weights=True)
    for b, x in enumerate(real_tokens(h, mask)):
        layers, cur = [x], x
        for lin in pool.mlp.lins:
            cur = torch.relu(cur @ lin.weight.T + lin.bias)
            layers.append(cur)
        u = {"cat": lambda: torch.cat(layers, -1), "last": lambda: layers[-1],
             "max": lambda: torch.stack(layers[1:]).max(0).values,
             "mean": lambda: torch.stack(layers[1:]).mean(0)}[jk]()
        s = torch.tanh(u @ pool.readout.proj.weight.T + pool.readout.proj.bias) @ pool.readout.score.weight[0]
        pi = torch.softmax(s, 0)
        torch.testing.assert_close(z[b], pi @ u, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(w[b][mask[b].bool()], pi, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("in_dim, hidden_dim, num_layers, jk", [(768, 256, 2, "cat"), (384, 128, 3, "max"),
                                                                  (24, 8, 1, "last")])
def test_mlp_attention_has_glot_gcn_parameter_budget(in_dim, hidden_dim, num_layers, jk):
    kw = dict(in_dim=in_dim, hidden_dim=hidden_dim, num_layers=num_layers, jk=jk)
    mlp, gcn = build_pooler("mlp_attention", **kw), build_pooler("glot", conv="gcn", **kw)
    assert count_parameters(mlp) == count_parameters(gcn) > 0
    assert mlp.out_dim == gcn.out_dim


def test_count_parameters():
    assert count_parameters(build_pooler("weighted_mean", in_dim=D)) == 0
    pool = build_pooler("pma", in_dim=8, num_heads=2)
    assert count_parameters(pool) == 8 + 4 * (8 * 8 + 8) + 2 * 2 * 8  # seed + q,k,v,rff + two LayerNorms
    pool.seeds.requires_grad_(False)
    assert count_parameters(pool) == 4 * (8 * 8 + 8) + 2 * 2 * 8


# ---------------------------------------------------------------------------------------------------------------
# option errors


@pytest.mark.parametrize("name, kw, match", [
    ("latent_attention", dict(num_heads=5), "num_heads=5 must be >= 1 and divide in_dim=24"),
    ("latent_attention", dict(num_latents=0), "num_latents must be >= 1"),
    ("pma", dict(num_heads=7), "num_heads=7"),
    ("pma", dict(num_seeds=0), "num_seeds must be >= 1"),
    ("mlp_attention", dict(jk="sum"), "valid modes: cat, max, mean, last"),
    ("mlp_attention", dict(conv="gat"), r"unknown option\(s\) \['conv'\]"),
    ("glot", dict(graph="soft", conv="gat"), "use conv='gcn' or conv='gin'"),
    ("glot", dict(graph="soft", conv="gatv2"), "use conv='gcn' or conv='gin'"),
    ("glot", dict(graph="soft", conv="gcn", temperature=0.0), "temperature > 0"),
])
def test_bad_options_raise(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build_pooler(name, in_dim=D, **kw)


# ---------------------------------------------------------------------------------------------------------------
# soft graph rule


def test_soft_graph_matches_loop_definition():
    assert "soft" in GRAPH_RULES
    h, mask = make_batch([6, 1, 4], L=7, seed=11)
    h = h + 0.7 * torch.randn(1, 1, D, dtype=h.dtype, generator=torch.Generator().manual_seed(0))
    T = 0.2
    adj = build_graph(h, mask.bool(), "soft", temperature=T)
    for b, x in enumerate(real_tokens(h, mask)):
        n = x.shape[0]
        cos = torch.tensor([[float(x[i] @ x[j] / (x[i].norm() * x[j].norm())) for j in range(n)] for i in range(n)],
                           dtype=h.dtype)
        P = torch.zeros(n, n, dtype=h.dtype)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            if others:
                e = torch.exp(cos[i, others] / T)
                P[i, others] = e / e.sum()
                torch.testing.assert_close(P[i].sum(), torch.tensor(1.0, dtype=h.dtype))
        expect = (P + P.T) / 2 + torch.eye(n, dtype=h.dtype)
        keep = mask[b].bool()
        torch.testing.assert_close(adj[b][keep][:, keep], expect, atol=1e-12, rtol=1e-10)
        assert adj[b][~keep].abs().sum() == 0 and adj[b][:, ~keep].abs().sum() == 0
    assert torch.equal(adj, adj.transpose(1, 2))
    # weighted degree = self-loop + the neighbours' unit mass (exactly 2 on average before and after symmetrising)
    torch.testing.assert_close(edges_per_token(adj, mask.bool()), torch.tensor([2.0, 1.0, 2.0], dtype=h.dtype))


def test_soft_graph_temperature_sharpens():
    h, mask = make_batch([10], seed=1)
    sharp = build_graph(h, mask.bool(), "soft", temperature=0.01)[0]
    flat = build_graph(h, mask.bool(), "soft", temperature=100.0)[0]
    off = ~torch.eye(10, dtype=torch.bool)
    assert sharp[off].max() > 0.4 and torch.allclose(flat[off], torch.full((90,), 1 / 9, dtype=h.dtype), atol=1e-3)


@pytest.mark.parametrize("conv", ["gcn", "gin"])
def test_glot_soft_matches_manual_weighted_gnn(conv):
    pool = make("glot", conv=conv, graph="soft", temperature=0.3, hidden_dim=6, num_layers=2, readout_hidden=5)
    h, mask = make_batch([5, 1, 3], L=6, seed=4)
    z = pool(h, mask)
    adj = build_graph(h, mask.bool(), "soft", temperature=0.3)
    for b, x in enumerate(real_tokens(h, mask)):
        keep = mask[b].bool()
        A = adj[b][keep][:, keep]
        layers, cur = [x], x
        for c in pool.gnn.convs:
            if conv == "gcn":
                dinv = A.sum(1).pow(-0.5)
                cur = torch.relu((dinv[:, None] * A * dinv[None]) @ (cur @ c.lin.weight.T) + c.bias)
            else:  # GIN: MLP((1 + eps) x + Σ_j A_ij x_j); eps = 0
                cur = torch.relu(c.nn(cur + A @ cur))
            layers.append(cur)
        u = torch.cat(layers, -1)
        s = torch.tanh(u @ pool.readout.proj.weight.T + pool.readout.proj.bias) @ pool.readout.score.weight[0]
        torch.testing.assert_close(z[b], torch.softmax(s, 0) @ u, atol=1e-10, rtol=1e-9)


def test_glot_soft_invariances_and_round_trip(tmp_path):
    pool = make("glot", conv="gcn", graph="soft")
    h, mask = make_batch([5, 2], L=7, seed=6)
    z = pool(h, mask)
    # padding content (NaN) and padding side are invisible
    h2 = h.clone()
    h2[mask == 0] = float("nan")
    torch.testing.assert_close(pool(h2, mask), z, atol=1e-10, rtol=1e-9)
    # permutation of real tokens
    perm = torch.tensor([3, 0, 4, 1, 2])
    h3 = h.clone()
    h3[0, :5] = h[0, perm]
    torch.testing.assert_close(pool(h3, mask)[0], z[0], atol=1e-10, rtol=1e-9)
    # batch independence
    torch.testing.assert_close(pool(h[1:, :2], mask[1:, :2]), z[1:], atol=1e-10, rtol=1e-9)
    pool.save_pretrained(tmp_path / "s")
    back = load_pooler(tmp_path / "s")
    assert back.config.graph == "soft" and back.config.temperature == pool.config.temperature
    torch.testing.assert_close(back.double()(h, mask), z)
