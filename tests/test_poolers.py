"""Core poolers: equivalence with an independent sparse formulation, invariances, errors, persistence."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glotpool import GLOTPooling, build_pooler, load_pooler
from glotpool.pooling.graph import build_graph, edges_per_token, graph_density
from glotpool.pooling import POOLERS
from reference import PerSentenceGLOT, threshold_edge_index
from pooler_helpers import D, make, make_batch

ALL = sorted(POOLERS)
LEARNED = ["adapool", "glot", "latent_attention", "pma", "mlp_attention"]
# every pooler except the position-dependent ones (cls, last, weighted_mean)
PERMUTATION_INVARIANT = ["mean", "max", "adapool", "glot", "latent_attention", "pma", "mlp_attention"]


# ---------------------------------------------------------------------------------------------------------------
# equivalence with the per-sentence sparse PyG formulation


@pytest.mark.parametrize("conv", ["gat", "gcn", "gin", "gatv2"])
@pytest.mark.parametrize("tau", [-1.0, 0.1, 0.3, 2.0])  # complete graph, sparse graphs, self-loops only
def test_dense_matches_sparse_pyg_reference(conv, tau):
    torch.manual_seed(1)
    pool = GLOTPooling(D, hidden_dim=16, num_layers=2, conv=conv, tau=tau)
    ref = PerSentenceGLOT.from_dense(pool)
    # a shared direction makes some cosines large, so the graph is neither empty nor complete
    h, mask = make_batch([7, 1, 12, 3, 9], L=14, seed=2)
    h = h + 1.0 * torch.randn(1, 1, D)
    z, pi = pool(h, mask, return_weights=True)
    z_ref, pi_ref = ref(h, mask, return_weights=True)
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pi, pi_ref, atol=1e-6, rtol=1e-4)


def test_graph_matches_edge_index_rule():
    h, mask = make_batch([6, 9, 4], L=10, seed=3)
    h = h + 0.8 * torch.randn(1, 1, D)
    adj = build_graph(h, mask.bool(), "threshold", tau=0.3)
    for b in range(3):
        keep = mask[b].bool()
        n = int(keep.sum())
        ei = threshold_edge_index(h[b][keep], 0.3)
        dense = torch.zeros(n, n)
        dense[ei[0], ei[1]] = 1
        assert torch.equal(adj[b][keep][:, keep], dense)
        assert adj[b][~keep].sum() == 0 and adj[b][:, ~keep].sum() == 0  # padding has no edges


def test_knn_graph_rule():
    h, mask = make_batch([8, 3], L=8, seed=4)
    adj = build_graph(h, mask.bool(), "knn", k=3)
    assert torch.equal(adj, adj.transpose(1, 2))  # symmetrised
    assert torch.all(torch.diagonal(adj, dim1=1, dim2=2) == mask)  # self-loops on real tokens only
    assert adj[1, 3:].sum() == 0 and adj[1, :, 3:].sum() == 0
    # every real token keeps at least its k (or n if fewer) nearest neighbours
    deg = adj.sum(-1)
    assert torch.all(deg[0] >= 3) and torch.all(deg[1, :3] == 3)
    hn = torch.nn.functional.normalize(h[0], dim=-1)
    sim = hn @ hn.T
    top = sim.topk(3, dim=-1).indices
    for i in range(8):
        assert all(adj[0, i, j] == 1 for j in top[i].tolist())


def test_centering_changes_anisotropic_graph():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, 20, D, generator=g) * 0.2 + 5.0 * torch.ones(D)  # anisotropic, like decoder states
    mask = torch.ones(1, 20, dtype=torch.bool)
    plain = graph_density(build_graph(h, mask, tau=0.6), mask)
    centred = graph_density(build_graph(h, mask, tau=0.6, center=True), mask)
    assert plain.item() == 1.0 and centred.item() < 0.3
    assert edges_per_token(build_graph(h, mask, tau=0.6), mask).item() == 20.0


# ---------------------------------------------------------------------------------------------------------------
# invariances (hypothesis)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(PERMUTATION_INVARIANT), n=st.integers(1, 10), seed=st.integers(0, 1000))
def test_permuting_real_tokens_leaves_z_unchanged(name, n, seed):
    pool = make(name, conv="gat", tau=0.2) if name == "glot" else make(name)
    h, mask = make_batch([n], L=n + 2, seed=seed)
    h = h.double()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    h2 = h.clone()
    h2[0, :n] = h[0, perm]
    torch.testing.assert_close(pool(h, mask), pool(h2, mask), atol=1e-10, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(ALL), n=st.integers(1, 8), extra=st.integers(1, 6), seed=st.integers(0, 1000),
       left=st.booleans())
def test_appending_padding_leaves_z_unchanged(name, n, extra, seed, left):
    pool = make(name, conv="gcn", tau=0.0) if name == "glot" else make(name)
    h, mask = make_batch([n], seed=seed)
    h = h.double()
    garbage = torch.full((1, extra, D), float("nan"), dtype=h.dtype)  # padding content must never leak
    pad = torch.zeros(1, extra, dtype=mask.dtype)
    if left:
        h2, m2 = torch.cat([garbage, h], 1), torch.cat([pad, mask], 1)
    else:
        h2, m2 = torch.cat([h, garbage], 1), torch.cat([mask, pad], 1)
    h2_before = h2.clone()
    torch.testing.assert_close(pool(h, mask), pool(h2, m2), atol=1e-10, rtol=1e-9)
    assert torch.equal(h2.isnan(), h2_before.isnan()) and torch.equal(h2.nan_to_num(), h2_before.nan_to_num())


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(ALL), lengths=st.lists(st.integers(1, 9), min_size=2, max_size=5),
       seed=st.integers(0, 1000))
def test_sentence_does_not_depend_on_batch(name, lengths, seed):
    pool = make(name, tau=0.1) if name == "glot" else make(name)
    h, mask = make_batch(lengths, seed=seed)
    h = h.double()
    z = pool(h, mask)
    for b, n in enumerate(lengths):
        alone = pool(h[b:b + 1, :n], mask[b:b + 1, :n])
        torch.testing.assert_close(z[b:b + 1], alone, atol=1e-10, rtol=1e-9)


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(ALL), lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       seed=st.integers(0, 1000), left=st.booleans())
def test_weights_sum_to_one_over_real_tokens_and_zero_on_padding(name, lengths, seed, left):
    pool = make(name)
    h, mask = make_batch(lengths, seed=seed, left_pad=left)
    z, w = pool(h.double(), mask, return_weights=True)
    torch.testing.assert_close(w.sum(1), torch.ones(len(lengths), dtype=w.dtype))
    assert torch.all(w[mask == 0] == 0) and torch.all(w >= 0)
    if name in ("mean", "adapool", "cls", "last", "weighted_mean"):  # z is the w-weighted sum of the raw tokens
        torch.testing.assert_close(z, torch.einsum("bl,bld->bd", w, h.double()))


# ---------------------------------------------------------------------------------------------------------------
# baselines


def test_cls_and_last_pick_first_and_last_real_token_for_both_padding_sides():
    h, mask_r = make_batch([3, 5, 1], L=6)
    _, mask_l = make_batch([3, 5, 1], L=6, left_pad=True)
    cls, last = build_pooler("cls", in_dim=D), build_pooler("last", in_dim=D)
    torch.testing.assert_close(cls(h, mask_r), h[[0, 1, 2], [0, 0, 0]])
    torch.testing.assert_close(last(h, mask_r), h[[0, 1, 2], [2, 4, 0]])
    torch.testing.assert_close(cls(h, mask_l), h[[0, 1, 2], [3, 1, 5]])
    torch.testing.assert_close(last(h, mask_l), h[[0, 1, 2], [5, 5, 5]])


def test_mean_and_max_match_direct_formulas_and_do_not_mutate_input():
    h, mask = make_batch([4, 2], L=5, seed=7)
    h_copy = h.clone()
    z_mean = build_pooler("mean", in_dim=D)(h, mask)
    z_max = build_pooler("max", in_dim=D)(h, mask)
    assert torch.equal(h, h_copy)
    torch.testing.assert_close(z_mean[0], h[0, :4].mean(0))
    torch.testing.assert_close(z_max[1], h[1, :2].max(0).values)


# ---------------------------------------------------------------------------------------------------------------
# training behaviour


@pytest.mark.parametrize("conv", ["gat", "gcn", "gin", "gatv2"])
def test_gradients_reach_every_parameter(conv):
    torch.manual_seed(0)
    pool = GLOTPooling(D, hidden_dim=8, num_layers=2, conv=conv, tau=0.0)
    h, mask = make_batch([5, 3], seed=1)
    pool(h, mask).pow(2).sum().backward()
    for name, p in pool.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", [n for n in LEARNED if n != "glot"])
def test_learned_baseline_gradients(name):
    pool = make(name).float()
    h, mask = make_batch([5, 3], seed=1)
    pool(h, mask).pow(2).sum().backward()
    for pname, p in pool.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_deterministic_under_seed():
    h, mask = make_batch([6, 4], seed=3)
    z1 = make("glot", seed=5).float()(h, mask)
    z2 = make("glot", seed=5).float()(h, mask)
    z3 = make("glot", seed=6).float()(h, mask)
    assert torch.equal(z1, z2) and not torch.allclose(z1, z3)


def test_out_dim_and_readout_width():
    pool = GLOTPooling(in_dim=384, hidden_dim=256, num_layers=2)
    assert pool.out_dim == 384 + 2 * 256
    assert pool.readout.hidden == max(128, pool.out_dim // 2)
    assert GLOTPooling(in_dim=16, hidden_dim=8, num_layers=1).readout.hidden == 128
    for jk in ["max", "mean", "last"]:
        p = GLOTPooling(in_dim=16, hidden_dim=8, num_layers=2, jk=jk)
        h, mask = make_batch([3, 2], D=16)
        assert p(h, mask).shape == (2, 8) and p.out_dim == 8


def test_length_one_sentence_works():
    for name in ALL:
        z = build_pooler(name, in_dim=D)(torch.randn(1, 1, D), torch.ones(1, 1))
        assert z.shape[0] == 1 and torch.isfinite(z).all()


# ---------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("h, mask, match", [
    (torch.randn(5, D), None, "rank 2.*unsqueeze"),
    (torch.randn(2, 3, D + 1), None, "D=25.*in_dim=24"),
    (torch.randn(2, 3, D), torch.ones(2, 4), r"shape \[B, L\] = \(2, 3\)"),
    (torch.randn(3, 3, D), torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]]), r"row\(s\) \[1\].*no real token"),
    (torch.randn(2, 3, D), torch.tensor([[1, 2, 0], [1, 0, 0]]), "only 0"),
    (torch.randint(0, 3, (2, 3, D)), None, "floating"),
])
@pytest.mark.parametrize("name", ["mean", "glot", "latent_attention", "pma", "weighted_mean", "mlp_attention"])
def test_bad_input_raises_specific_value_error(name, h, mask, match):
    with pytest.raises(ValueError, match=match):
        build_pooler(name, in_dim=D)(h, mask)


def test_nan_in_real_tokens_names_the_row():
    h, mask = make_batch([3, 3, 2], L=3)
    h[2, 2] = float("nan")  # padding: fine
    build_pooler("glot", in_dim=D)(h, mask)
    h[1, 0, 4] = float("inf")
    with pytest.raises(ValueError, match=r"NaN/Inf.*row\(s\) \[1\]"):
        build_pooler("glot", in_dim=D)(h, mask)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid poolers: adapool, cls, glot"):
        build_pooler("median", in_dim=D)
    with pytest.raises(ValueError, match="valid convs: gat, gcn, gin"):
        build_pooler("glot", in_dim=D, conv="sage")
    with pytest.raises(ValueError, match="valid rules: threshold, knn"):
        build_pooler("glot", in_dim=D, graph="radius")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['hidden'\].*hidden_dim"):
        build_pooler("glot", in_dim=D, hidden=3)
    with pytest.raises(ValueError, match="in_dim"):
        build_pooler("mean", in_dim=0)


# ---------------------------------------------------------------------------------------------------------------
# persistence


@pytest.mark.parametrize("name", ALL)
def test_save_and_load_round_trip(name, tmp_path):
    pool = make(name, conv="gin", num_layers=3, tau=0.2).float() if name == "glot" else make(name).float()
    pool.save_pretrained(tmp_path / "p")
    assert {f.name for f in (tmp_path / "p").iterdir()} == {"config.json", "model.safetensors"}
    loaded = load_pooler(tmp_path / "p")
    assert type(loaded) is type(pool) and loaded.config == pool.config
    h, mask = make_batch([4, 2], seed=9)
    assert torch.equal(pool(h, mask), loaded(h, mask))
    if name == "glot":
        assert GLOTPooling.from_pretrained(tmp_path / "p").config.conv == "gin"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_pooler(tmp_path)
    build_pooler("mean", in_dim=D).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="holds a 'mean' pooler"):
        GLOTPooling.from_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["pooler"] = "nope"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown pooler 'nope'"):
        load_pooler(tmp_path / "m")


def test_tau_for_density_hits_the_target_density():
    from glotpool.pooling.graph import tau_for_density

    g = torch.Generator().manual_seed(0)
    h = torch.randn(8, 30, D, generator=g) + 3.0  # anisotropic: a fixed tau would keep almost every pair
    mask = torch.ones(8, 30, dtype=torch.bool)
    mask[3, 20:] = False
    tau = tau_for_density(h, mask, 0.1)
    adj = build_graph(h, mask, "threshold", tau=tau)
    n = mask.sum(1).double()
    off_diag = (adj.sum((1, 2)).double() - n).sum() / (n * (n - 1)).sum()
    assert abs(off_diag.item() - 0.1) < 0.01
    assert graph_density(build_graph(h, mask, "threshold", tau=0.6), mask).min() > 0.9
    with pytest.raises(ValueError, match="density"):
        tau_for_density(h, mask, 1.5)
