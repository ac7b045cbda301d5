"""Sparse GLOT path (glotpool.pooling.sparse): same graph and same pooling as the dense path, without L×L memory."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glotpool import GLOTPooling, load_pooler
from glotpool.pooling.graph import build_graph
from glotpool.pooling.sparse import chunked_edge_index, edge_index_to_dense, pack, unpack

D = 24
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_long.py"


def make_batch(lengths, L=None, seed=0, left_pad=False, shared=0.8, dtype=torch.float32):
    """Random states with a shared direction (so threshold graphs are neither empty nor complete)."""
    g = torch.Generator().manual_seed(seed)
    L = L or max(lengths)
    h = torch.randn(len(lengths), L, D, generator=g, dtype=torch.float64)
    h = (h + shared * torch.randn(1, 1, D, generator=g, dtype=torch.float64)).to(dtype)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if left_pad:
            mask[b, L - n:] = True
        else:
            mask[b, :n] = True
    return h, mask


def assert_edge_index_well_formed(ei, n):
    assert ei.dtype == torch.long and ei.shape[0] == 2
    assert int(ei.min()) >= 0 and int(ei.max()) < n
    keys = ei[0] * n + ei[1]
    assert torch.equal(keys, keys.unique()), "edges must be sorted and unique"
    rev = torch.sort(ei[1] * n + ei[0]).values
    assert torch.equal(keys, rev), "edge_index must be symmetric"
    assert torch.equal((ei[0] == ei[1]).sum(), torch.tensor(n)), "exactly one self-loop per token"


# ---------------------------------------------------------------------------------------------------------------
# the chunked neighbour search builds exactly the dense graph


@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 13, 64])  # 13 does not divide L=17; 64 > L: several sentences a step
@pytest.mark.parametrize("rule,param", [("knn", 1), ("knn", 4), ("knn", 30), ("threshold", -2.0),
                                        ("threshold", 0.2), ("threshold", 0.5), ("threshold", 1.5)])
def test_chunked_edges_equal_dense_graph(rule, param, chunk_size, left_pad):
    h, mask = make_batch([17, 1, 9, 4], L=17, seed=3, left_pad=left_pad)
    kw = {"k": param} if rule == "knn" else {"tau": param}
    for center in (False, True):
        dense = build_graph(h, mask, rule, center=center, **kw)
        ei = chunked_edge_index(h, mask, rule, center=center, chunk_size=chunk_size, **kw)
        assert_edge_index_well_formed(ei, int(mask.sum()))
        assert torch.equal(edge_index_to_dense(ei, mask), dense)


def exact_tie_states(B, L, seed=0, dtype=torch.float32):
    """Unit vectors with four entries ±1/2: every cosine is a multiple of 1/4, computed exactly by any matmul
    blocking (sums of ±1/4), so both builders see bit-identical rows with many exact ties."""
    g = torch.Generator().manual_seed(seed)
    h = torch.zeros(B, L, D, dtype=dtype)
    pos = torch.rand(B, L, D, generator=g).argsort(-1)[..., :4]
    signs = torch.randint(0, 2, (B, L, 4), generator=g).to(dtype) - 0.5
    return h.scatter_(-1, pos, signs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1024])
def test_ties_are_broken_like_the_dense_builder(chunk_size, dtype):
    """Exact ties (equal cosines; repeated tokens): which tied neighbour k keeps is topk's choice on the full
    row, and each chunk ranks that same full row, so both builders keep the same ones."""
    h = exact_tie_states(2, 40, dtype=dtype)
    h[:, 20:] = h[:, :20].clone()  # repeated tokens too
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 33:] = False
    for k in (2, 3, 9):
        dense = build_graph(h, mask, "knn", k=k)
        ei = chunked_edge_index(h, mask, "knn", k=k, chunk_size=chunk_size)
        assert torch.equal(edge_index_to_dense(ei, mask, dtype=dtype), dense)
    for tau in (0.0, 0.25, 0.5):  # tau equal to attained cosines: the strict '>' boundary
        dense = build_graph(h, mask, "threshold", tau=tau)
        ei = chunked_edge_index(h, mask, "threshold", tau=tau, chunk_size=chunk_size)
        assert torch.equal(edge_index_to_dense(ei, mask, dtype=dtype), dense)
    # the ties really bite: token 0's row has more candidates at its k-th cosine than places left
    row = (h[0] @ h[0, 0]).sort(descending=True).values
    assert row[2] == row[3] and row[1] == 1.0  # itself and its repeat, then a tie


def test_max_degree_caps_threshold_picks():
    h, mask = make_batch([30, 12], seed=5, shared=2.0)  # a dense threshold graph
    full = chunked_edge_index(h, mask, "threshold", tau=0.2)
    capped = chunked_edge_index(h, mask, "threshold", tau=0.2, max_degree=3, chunk_size=7)
    n = int(mask.sum())
    assert_edge_index_well_formed(capped, n)
    assert full.shape[1] > 4 * n  # the uncapped graph is much denser than the cap
    assert capped.shape[1] <= 2 * 3 * n  # each token picks <= 3 (itself included), then symmetrised
    # capped edges are a subset of the threshold graph's
    a_full, a_cap = edge_index_to_dense(full, mask), edge_index_to_dense(capped, mask)
    assert torch.all(a_cap <= a_full)
    # with a cap above every degree it is the plain threshold graph
    assert torch.equal(chunked_edge_index(h, mask, "threshold", tau=0.2, max_degree=100), full)


def test_pack_unpack_round_trip():
    h, mask = make_batch([3, 5, 1], L=6, left_pad=True)
    x, batch = pack(h, mask)
    assert x.shape == (9, D) and batch.tolist() == [0] * 3 + [1] * 5 + [2]
    assert torch.equal(unpack(x, mask), h * mask.unsqueeze(-1))


def test_bad_arguments_raise():
    h, mask = make_batch([4, 2])
    with pytest.raises(ValueError, match="soft"):
        chunked_edge_index(h, mask, "soft")
    with pytest.raises(ValueError, match="k >= 1"):
        chunked_edge_index(h, mask, "knn", k=0)
    with pytest.raises(ValueError, match="max_degree"):
        chunked_edge_index(h, mask, "knn", max_degree=3)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_edge_index(h, mask, "knn", chunk_size=0)


# ---------------------------------------------------------------------------------------------------------------
# the sparse pooling equals the dense pooling, with the same module


@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("graph", ["knn", "threshold"])
@pytest.mark.parametrize("conv", ["gat", "gcn", "gin", "gatv2"])
def test_sparse_pooling_equals_dense(conv, graph, left_pad):
    torch.manual_seed(0)
    pool = GLOTPooling(D, hidden_dim=16, num_layers=2, conv=conv, graph=graph, k=4, tau=0.3, chunk_size=6)
    h, mask = make_batch([11, 1, 7, 3], L=12, seed=1, left_pad=left_pad)
    z, w = pool(h, mask, return_weights=True)
    pool.config.sparse = True
    zs, ws = pool(h, mask, return_weights=True)
    torch.testing.assert_close(zs, z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ws, w, atol=1e-6, rtol=1e-5)
    assert torch.all(ws[~mask] == 0)


@pytest.mark.parametrize("jk", ["max", "mean", "last"])
def test_sparse_equals_dense_for_other_options(jk):
    torch.manual_seed(1)
    pool = GLOTPooling(D, hidden_dim=8, num_layers=3, conv="gat", graph="threshold", tau=0.25, jk=jk,
                       center=True, max_degree=3, chunk_size=4)
    h, mask = make_batch([9, 5, 2], seed=2)
    z, w = pool(h, mask, return_weights=True)
    pool.config.sparse = True
    zs, ws = pool(h, mask, return_weights=True)
    torch.testing.assert_close(zs, z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ws, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("conv", ["gat", "gin"])
def test_sparse_gradients_equal_dense(conv):
    """The sparse path trains the very same parameters: identical gradients."""
    torch.manual_seed(2)
    pool = GLOTPooling(D, hidden_dim=8, num_layers=2, conv=conv, graph="knn", k=3).double()
    h, mask = make_batch([8, 3, 6], seed=4, dtype=torch.float64)
    grads = []
    for sparse in (False, True):
        pool.config.sparse = sparse
        pool.zero_grad()
        pool(h, mask).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in pool.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-10, rtol=1e-8, msg=name)


def test_auto_switches_on_length(monkeypatch):
    torch.manual_seed(3)
    pool = GLOTPooling(D, hidden_dim=8, graph="knn", k=3, sparse="auto", sparse_min_length=10)
    assert not pool.uses_sparse(10) and pool.uses_sparse(11)
    short, short_mask = make_batch([10, 4], L=10)
    long, long_mask = make_batch([11, 4], L=11)
    z_short = pool(short, short_mask)
    import glotpool.pooling.glot as poolers

    def no_dense(*a, **k):
        raise AssertionError("the dense graph builder must not run on the sparse path")

    monkeypatch.setattr(poolers, "build_graph", no_dense)
    z_long = pool(long, long_mask)  # sparse: never calls the dense builder
    assert z_long.shape == (2, pool.out_dim)
    with pytest.raises(AssertionError, match="must not run"):
        pool(short, short_mask)  # dense for L <= sparse_min_length
    monkeypatch.undo()
    pool.config.sparse = False
    torch.testing.assert_close(pool(long, long_mask), z_long, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool(short, short_mask), z_short)
    # edges_per_token agrees between the paths
    pool.config.sparse = True
    e_sparse = pool.edges_per_token(long, long_mask)
    pool.config.sparse = False
    torch.testing.assert_close(e_sparse, pool.edges_per_token(long, long_mask))


def test_sparse_step_never_allocates_l_by_l():
    """Largest single allocation of a sparse forward stays far below one L×L float matrix."""
    from torch.profiler import ProfilerActivity, profile

    L = 2048
    torch.manual_seed(4)
    pool = GLOTPooling(16, hidden_dim=8, graph="knn", k=4, sparse=True, chunk_size=128)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, L, 16, generator=g)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        pool(h)
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert biggest > 0  # the profiler saw allocations
    assert biggest < L * L * 4 / 4, f"an op allocated {biggest / 2**20:.1f} MiB"  # chunk·L·4 B = 1 MiB


# ---------------------------------------------------------------------------------------------------------------
# options, validation, persistence


def test_invalid_sparse_options_raise():
    with pytest.raises(ValueError, match="sparse must be False, True or 'auto'"):
        GLOTPooling(D, sparse="yes")
    with pytest.raises(ValueError, match="no sparse form"):
        GLOTPooling(D, graph="soft", conv="gcn", sparse=True)
    with pytest.raises(ValueError, match="no sparse form"):
        GLOTPooling(D, graph="soft", conv="gcn", sparse="auto")
    with pytest.raises(ValueError, match="max_degree caps the threshold rule"):
        GLOTPooling(D, graph="knn", max_degree=4)
    with pytest.raises(ValueError, match="max_degree must be >= 1"):
        GLOTPooling(D, max_degree=0)
    with pytest.raises(ValueError, match="chunk_size must be (an int )?>= 1"):
        GLOTPooling(D, chunk_size=0)
    with pytest.raises(ValueError, match="sparse_min_length"):
        GLOTPooling(D, sparse_min_length=-1)


def test_save_load_keeps_sparse_and_old_configs_load(tmp_path):
    torch.manual_seed(5)
    pool = GLOTPooling(D, hidden_dim=8, graph="knn", k=3, sparse="auto", sparse_min_length=4, chunk_size=3)
    pool.save_pretrained(tmp_path / "p")
    loaded = load_pooler(tmp_path / "p")
    assert loaded.config == pool.config and loaded.config.sparse == "auto"
    h, mask = make_batch([6, 2])
    assert torch.equal(loaded(h, mask), pool(h, mask))
    # a folder saved before the sparse options existed (and before weights carried their config and checksum)
    # still loads, with the dense defaults
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "p" / "model.safetensors"
    save_file(load_file(str(weights)), str(weights))  # no metadata, as older versions wrote it
    cfg_file = tmp_path / "p" / "config.json"
    meta = json.loads(cfg_file.read_text())
    meta.pop("weights_sha256")
    for key in ("sparse", "sparse_min_length", "chunk_size", "max_degree"):
        del meta["config"][key]
    cfg_file.write_text(json.dumps(meta))
    old = load_pooler(tmp_path / "p")
    assert old.config.sparse is False and old.config.max_degree is None and not old.uses_sparse(10**6)
    torch.testing.assert_close(old(h, mask), pool(h, mask), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# benchmark smoke test


def test_bench_long_quick_runs(tmp_path):
    out = tmp_path / "long.json"
    # a 0.5 MiB cap: dense runs at L=64 and 128 and is skipped at 256 (>= three 256×256 fp32 tensors = 0.75 MiB)
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--mem-cap-gb", "0.0005", "--json", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "growth exponent" in proc.stdout and "sparse fwd MiB" in proc.stdout
    assert "skipped (would need" in proc.stdout
    data = json.loads(out.read_text())
    rows = {(r["path"], r["L"]): r for r in data["results"]}
    assert set(rows) == {(p, L) for p in ("dense", "sparse") for L in (64, 128, 256)}
    assert "skipped" in rows["dense", 256] and "skipped" not in rows["dense", 128]
    for key, r in rows.items():
        if "skipped" in r:
            continue
        assert r["fwd_ms"] > 0 and r["peak_fwd_mib"] >= 0
        assert (r["fwd_bwd_ms"] is not None) == (r["L"] <= data["bwd_max_len"])
        if r["path"] == "sparse":
            assert 1.0 <= r["edges_per_token"] <= 2 * 4  # self-loop at least; k=4 picks, symmetrised
