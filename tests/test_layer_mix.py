"""Learned layer mix (issue #20 B): ScalarMix, ``layer_mix=K`` on every pooler, GLOT's ``graph_layer``."""
from __future__ import annotations

import json

import pytest
import torch

from glotpool import GLOTPooling, build_pooler, load_pooler
from glotpool.pooling import POOLERS
from glotpool.pooling.base import check_pooler_options
from glotpool.pooling.graph import build_graph, tau_for_density
from glotpool.pooling.layer_mix import ScalarMix
from pooler_helpers import D, make, make_batch

ALL = sorted(POOLERS)
K = 3
# small graphs that are neither empty nor complete on standard normal states
OPTIONS = {"glot": {"tau": 0.2, "conv": "gcn"}}


def layered_batch(lengths, seed=0, L=None):
    """``h [B, L, K, D]`` float64 standard normal and its 0/1 mask."""
    g = torch.Generator().manual_seed(seed)
    L = L or max(lengths)
    _, mask = make_batch(lengths, L=L)
    return torch.randn(len(lengths), L, K, D, generator=g, dtype=torch.float64), mask


def hand_mix(h, s, gamma):
    """ELMo's scalar mix written out: γ Σ_k exp(s_k) / Σ_j exp(s_j) · h[:, :, k]."""
    e = [float(torch.exp(x)) for x in s.detach()]
    return float(gamma.detach()) * sum(e[k] / sum(e) * h[:, :, k] for k in range(len(e)))


def randomise_mix(pool, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pool.layer_mix.scalars.copy_(torch.randn(K, generator=g, dtype=torch.float64))
        pool.layer_mix.gamma.fill_(1.7)
    return pool


def mixed_and_single(name, seed=0, **kw):
    """A ``layer_mix=K`` pooler with a non-uniform mix and the ``layer_mix=1`` pooler holding its other weights."""
    opts = {**OPTIONS.get(name, {}), **kw}
    pool = randomise_mix(make(name, seed=seed, layer_mix=K, **opts))
    single = make(name, seed=seed + 1, **opts)
    single.load_state_dict({k: v for k, v in pool.state_dict().items() if not k.startswith("layer_mix.")})
    return pool, single


# ---------------------------------------------------------------------------------------------------------------
# ScalarMix


def test_scalar_mix_matches_the_written_out_formula():
    mix = ScalarMix(K).double()
    h, _ = layered_batch([4, 2])
    torch.testing.assert_close(mix(h), h.mean(2))  # init: uniform weights, γ = 1
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([0.5, -1.0, 2.0]))
        mix.gamma.fill_(0.3)
    torch.testing.assert_close(mix(h), hand_mix(h, mix.scalars, mix.gamma))
    torch.testing.assert_close(mix.weights(), torch.softmax(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), 0))
    mix.reset_parameters()
    assert torch.equal(mix.weights(), torch.full((K,), 1 / K, dtype=torch.float64)) and mix.gamma.item() == 1.0
    assert sum(p.numel() for p in mix.parameters()) == K + 1


def test_scalar_mix_softmax_stays_fp32_under_bf16_autocast():
    mix = ScalarMix(K)
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([0.0, 1e-3, 2e-3]))  # differences below bf16 resolution near 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = mix.weights()
        out = mix(torch.ones(1, 2, K, 4, dtype=torch.bfloat16))
    assert w.dtype == torch.float32 and len(set(w.tolist())) == K
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 4)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_scalar_mix_refuses_bad_layer_counts(bad):
    with pytest.raises(ValueError, match="num_layers must be an int >= 1"):
        ScalarMix(bad)


# ---------------------------------------------------------------------------------------------------------------
# every pooler: layer_mix=1 is today's module, layer_mix=K mixes then pools


@pytest.mark.parametrize("name", ALL)
def test_layer_mix_one_is_the_plain_pooler(name):
    opts = OPTIONS.get(name, {})
    plain, one = make(name, **opts), make(name, layer_mix=1, **opts)
    assert list(plain.state_dict()) == list(one.state_dict())
    assert all(torch.equal(v, one.state_dict()[k]) for k, v in plain.state_dict().items())
    assert plain.num_trainable_parameters() == one.num_trainable_parameters()
    assert one.layer_mix_weights() is None and one.config.layer_mix == 1
    h, mask = make_batch([5, 3, 1], seed=2, dtype=torch.float64)
    z0, w0 = plain(h, mask, return_weights=True)
    z1, w1 = one(h, mask, return_weights=True)
    assert torch.equal(z0, z1) and torch.equal(w0, w1)


@pytest.mark.parametrize("name", ALL)
def test_mixed_pooler_equals_plain_pooler_on_hand_mixed_states(name):
    pool, single = mixed_and_single(name)
    assert pool.num_trainable_parameters() == single.num_trainable_parameters() + K + 1
    h, mask = layered_batch([5, 2, 4], seed=3)
    z, w = pool(h, mask, return_weights=True)
    z1, w1 = single(hand_mix(h, pool.layer_mix.scalars, pool.layer_mix.gamma), mask, return_weights=True)
    torch.testing.assert_close(z, z1, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(w, w1, atol=1e-10, rtol=1e-9)
    mw = pool.layer_mix_weights()
    assert mw["gamma"] == pytest.approx(1.7)
    assert mw["weights"] == pytest.approx(torch.softmax(pool.layer_mix.scalars.detach(), 0).tolist())


@pytest.mark.parametrize("name", ALL)
def test_mixed_pooler_save_load_round_trip(name, tmp_path):
    pool = randomise_mix(make(name, layer_mix=K, **OPTIONS.get(name, {})).float())
    pool.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["config"]["layer_mix"] == K
    loaded = load_pooler(tmp_path / "p")
    assert type(loaded) is type(pool) and loaded.config == pool.config
    assert loaded.layer_mix_weights() == pool.layer_mix_weights()
    h, mask = layered_batch([4, 2], seed=9)
    assert torch.equal(pool(h.float(), mask), loaded(h.float(), mask))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("left", [False, True])
def test_nan_in_the_padding_of_every_layer_never_reaches_z(name, left):
    pool = randomise_mix(make(name, layer_mix=K, **OPTIONS.get(name, {})))
    h, mask = layered_batch([4, 2], seed=5)
    garbage = torch.full((2, 3, K, D), float("nan"), dtype=h.dtype)
    pad = torch.zeros(2, 3, dtype=mask.dtype)
    h2, m2 = (torch.cat([garbage, h], 1), torch.cat([pad, mask], 1)) if left else \
        (torch.cat([h, garbage], 1), torch.cat([mask, pad], 1))
    h2[1, slice(5, 7) if left else slice(2, 4)] = float("nan")  # row 1's own padding (mask 0), every layer
    h2_before = h2.clone()
    z = pool(h2, m2)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(pool(h[:1], mask[:1]), z[:1], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(pool(h[1:, :2], mask[1:, :2]), z[1:], atol=1e-10, rtol=1e-9)
    assert torch.equal(h2.isnan(), h2_before.isnan()) and torch.equal(h2.nan_to_num(), h2_before.nan_to_num())


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_the_mix(name):
    pool = randomise_mix(make(name, layer_mix=K, **OPTIONS.get(name, {})))
    h, mask = layered_batch([4, 2], seed=6)
    z = pool(h, mask)
    (z * torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=z.dtype)).sum().backward()
    assert pool.layer_mix.scalars.grad.abs().min() > 0 and pool.layer_mix.gamma.grad.abs() > 0


@pytest.mark.parametrize("name", ALL)
def test_reset_parameters_resets_the_mix(name):
    pool = randomise_mix(make(name, layer_mix=K, **OPTIONS.get(name, {})))
    pool.reset_parameters()
    assert pool.layer_mix_weights() == {"weights": [pytest.approx(1 / K)] * K, "gamma": 1.0}
    if name == "mean_linear":  # back to plain mean pooling
        h, mask = layered_batch([4, 2])
        torch.testing.assert_close(pool(h, mask), make("mean")(h.mean(2), mask))


@pytest.mark.parametrize("shape, match", [
    ((2, 4, D), r"layer_mix=3: hidden_states must have shape \[B, L, K, D\] = \[B, L, 3, 24\], got shape "
                r"\(2, 4, 24\) \(one layer\?"),
    ((2, 4, 2, D), r"layer_mix=3.*\[B, L, 3, 24\], got shape \(2, 4, 2, 24\)"),
    ((2, 4, K, D + 1), r"feature size D=25 .* in_dim=24"),
    ((2, 4, K, D, 1), r"layer_mix=3.*got shape \(2, 4, 3, 24, 1\)"),
])
def test_mixed_pooler_shape_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        make("mean", layer_mix=K)(torch.zeros(shape, dtype=torch.float64))


def test_layer_errors_name_layer_mix_and_the_row():
    with pytest.raises(ValueError, match=r"shape \[B, L, D\].*rank 4.*layer_mix=1; build it with layer_mix=K"):
        make("glot")(torch.zeros(2, 4, K, D, dtype=torch.float64))
    h, mask = layered_batch([4, 2])
    h[1, 0, 2, 5] = float("nan")  # a real token, last layer only
    with pytest.raises(ValueError, match=r"NaN/Inf at real tokens of row\(s\) \[1\]"):
        make("mean", layer_mix=K)(h, mask)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[B, L\] = \(2, 4\)"):
        make("mean", layer_mix=K)(h, mask[:, :3])


@pytest.mark.parametrize("bad", [0, -2, True, "3", 2.0])
def test_layer_mix_option_is_checked(bad):
    with pytest.raises(ValueError, match="option layer_mix must be"):
        check_pooler_options("mean", layer_mix=bad)
    with pytest.raises(ValueError, match="option layer_mix must be"):
        build_pooler("glot", in_dim=D, layer_mix=bad)
    check_pooler_options("glot", layer_mix=4, graph_layer=-1)


# ---------------------------------------------------------------------------------------------------------------
# GLOT: the graph from one layer, GNN and readout on the mix


def zeroed(h, mask):
    return h * mask.unsqueeze(-1).to(h.dtype)


@pytest.mark.parametrize("graph_layer", [0, 1, -1])
@pytest.mark.parametrize("rule", [{"graph": "threshold", "tau": 0.2}, {"graph": "knn", "k": 2}])
def test_graph_layer_builds_the_single_layer_graph(graph_layer, rule):
    h, mask = layered_batch([6, 3, 5], seed=7)
    pool = randomise_mix(make("glot", layer_mix=K, graph_layer=graph_layer, conv="gcn", **rule))
    layer = zeroed(h[:, :, graph_layer], mask.bool())
    adj = pool.build_graph(h, mask.bool())
    assert torch.equal(adj, make("glot", conv="gcn", **rule).build_graph(layer, mask.bool()))
    assert torch.equal(adj, build_graph(layer, mask.bool(), rule["graph"], tau=rule.get("tau", 0.6),
                                        k=rule.get("k", 8)))
    # forward = the GNN and readout on the mix over that graph
    mixed = hand_mix(h, pool.layer_mix.scalars, pool.layer_mix.gamma)
    z_ref, w_ref = pool.readout(pool.gnn(mixed, adj, mask.bool()), mask.bool())
    z, w = pool(h, mask, return_weights=True)
    torch.testing.assert_close(z, z_ref, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(w, w_ref.to(w.dtype), atol=1e-10, rtol=1e-9)
    # the sparse (long-document) path: same graph, same function
    sparse = make("glot", layer_mix=K, graph_layer=graph_layer, conv="gcn", sparse=True, **rule)
    sparse.load_state_dict(pool.state_dict())
    torch.testing.assert_close(sparse(h, mask), z, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(sparse.edges_per_token(h, mask), pool.edges_per_token(h, mask))


def test_graph_from_the_mix_by_default_and_graph_layer_changes_z():
    h, mask = layered_batch([8, 6], seed=8)
    mixed_graph = randomise_mix(make("glot", layer_mix=K, tau=0.2, conv="gcn"))
    from_layer = make("glot", layer_mix=K, tau=0.2, conv="gcn", graph_layer=0)
    from_layer.load_state_dict(mixed_graph.state_dict())
    mixed = hand_mix(h, mixed_graph.layer_mix.scalars, mixed_graph.layer_mix.gamma)
    adj_mix = mixed_graph.build_graph(h, mask.bool())
    assert torch.equal(adj_mix, build_graph(zeroed(mixed, mask.bool()), mask.bool(), "threshold", tau=0.2))
    assert not torch.equal(adj_mix, from_layer.build_graph(h, mask.bool()))
    assert not torch.allclose(mixed_graph(h, mask), from_layer(h, mask))


def test_calibrate_tau_uses_the_graph_layer():
    h, mask = layered_batch([8, 6, 7], seed=4)
    pool = make("glot", layer_mix=K, graph_layer=2, target_density=0.3)
    tau = pool.calibrate_tau(h, mask)
    assert tau == round(tau_for_density(zeroed(h[:, :, 2], mask.bool()), mask.bool(), 0.3), 4)
    assert tau != round(tau_for_density(zeroed(h[:, :, 0], mask.bool()), mask.bool(), 0.3), 4)
    assert pool.config.tau == tau and torch.isfinite(pool(h, mask)).all()


@pytest.mark.parametrize("opts, match", [
    ({"graph_layer": 0}, r"graph_layer=0 .* layer_mix=1 \(one layer\)"),
    ({"layer_mix": K, "graph_layer": K}, r"graph_layer=3 is out of range for layer_mix=3: use 0..2, or -3..-1"),
    ({"layer_mix": K, "graph_layer": -K - 1}, r"graph_layer=-4 is out of range"),
    ({"layer_mix": K, "graph_layer": True}, r"option graph_layer must be int or None"),
])
def test_graph_layer_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        GLOTPooling(in_dim=D, **opts)


def test_build_graph_refuses_layers_it_was_not_built_for():
    h, mask = layered_batch([4, 2])
    with pytest.raises(ValueError, match=r"K = layer_mix = 1, got shape \(2, 4, 3, 24\)"):
        make("glot").build_graph(h, mask.bool())
    with pytest.raises(ValueError, match=r"K = layer_mix = 2"):
        make("glot", layer_mix=2, graph_layer=0).build_graph(h, mask.bool())


# ---------------------------------------------------------------------------------------------------------------
# folders saved before the option existed


@pytest.mark.parametrize("name", ["mean", "glot"])
def test_folder_saved_before_layer_mix_existed_still_loads(name, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from glotpool.configured import CONFIG_METADATA_KEY
    from glotpool.io_utils import sha256_file

    pool = make(name, **OPTIONS.get(name, {})).float()
    folder = tmp_path / "old"
    pool.save_pretrained(folder)
    new_options = ("layer_mix", "graph_layer")
    weights, cfg_file = folder / "model.safetensors", folder / "config.json"
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    old_config = {k: v for k, v in json.loads(meta[CONFIG_METADATA_KEY]).items() if k not in new_options}
    save_file(load_file(str(weights)), str(weights), metadata={**meta, CONFIG_METADATA_KEY: json.dumps(old_config)})
    record = json.loads(cfg_file.read_text())
    record["config"] = {k: v for k, v in record["config"].items() if k not in new_options}
    record["weights_sha256"] = {"model.safetensors": sha256_file(weights)}
    cfg_file.write_text(json.dumps(record))
    loaded = load_pooler(folder)
    h, mask = make_batch([4, 2], seed=9)
    assert loaded.config.layer_mix == 1 and torch.equal(loaded(h, mask), pool(h, mask))
