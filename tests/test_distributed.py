"""Distributed caching and DDP training: 2 gloo processes on CPU must reproduce the single-process results."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from glotpool.states.cache import (build_cache, build_cache_distributed, iter_texts_streaming,  # noqa: E402
                                   merge_cache, open_cache, resolve_rank)
from glotpool.io_utils import atomic_write_json  # noqa: E402

# glotpool.training.trainer (-> torch_geometric, ~5 s to import) is imported inside the training tests only, so that the
# spawned caching ranks, which re-import this module, start faster.

_A = ["a dog", "the old man", "this film", "my neighbour's cat", "the committee"]
_B = ["runs .", "sleeps all day long .", "was a clumsy mix of comedy and melodrama .", "voted no .",
      "never quite finds its rhythm , sadly ."]
TEXTS = [f"{_A[i % 5]} {_B[(i * 3) % 5]}" + " really" * (i % 3) for i in range(30)]
KW = dict(batch_size=4, shard_tokens=40, show_progress=False)  # 30 texts -> ~8 tiny shards


def _files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _spawn(fn, world: int, *args) -> None:
    mp.spawn(fn, args=(world, *args), nprocs=world, join=True)


def _init(rank: int, world: int, store: str) -> None:
    torch.set_num_threads(1)  # same kernels as the 1-thread reference
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return os.environ.get("GLOTPOOL_HOME") or str(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def bb(home):
    from glotpool.states.backbone import load_backbone
    with pytest.MonkeyPatch.context() as m:
        m.setenv("GLOTPOOL_HOME", home)
        yield load_backbone("minilm")


@pytest.fixture(scope="module")
def single(bb, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_cache(bb, TEXTS, tmp_path_factory.mktemp("single") / "c", **KW)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ caching


def _cache_worker(rank, world, store, out, home):
    os.environ["GLOTPOOL_HOME"] = home
    _init(rank, world, store)
    from glotpool.states.backbone import load_backbone
    cache = build_cache_distributed(load_backbone("minilm"), TEXTS, out, **KW)
    assert cache is not None and len(cache) == len(TEXTS)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_rank_cache_is_byte_identical_to_single_process(single, tmp_path, home):
    out = tmp_path / "dist"
    _spawn(_cache_worker, 2, str(tmp_path / "store"), str(out), home)
    assert _files(out) == _files(single.path)  # shards, texts.json and index.json: the same bytes
    cache = open_cache(out)
    assert len(cache.meta) and cache.key == single.key and len(cache._files) >= 4
    for i in range(len(TEXTS)):
        assert torch.equal(cache.batch([i])[0], single.batch([i])[0])
    idx = list(range(len(TEXTS)))[::-1]
    assert all(torch.equal(a, b) for a, b in zip(cache.batch(idx), single.batch(idx)))


@pytest.mark.slow
def test_rank_mode_without_process_group_resumes_then_merges(bb, single, tmp_path, monkeypatch):
    out = tmp_path / "ranks"
    calls = []
    real = bb.forward_batch
    monkeypatch.setattr(bb, "forward_batch", lambda batch: calls.append(1) or real(batch))
    torch.set_num_threads(1)
    try:
        assert build_cache_distributed(bb, TEXTS, out, rank=0, world_size=2, **KW) is None
        n0 = len(calls)
        assert n0 > 0 and not (out / "index.json").exists() and (out / "progress.rank00000.json").is_file()
        with pytest.raises(ValueError, match="unfinished.*distributed"):
            open_cache(out)
        recorded = json.loads((out / "progress.rank00000.json").read_text())["done"]
        assert sorted(int(k) % 2 for k in recorded) == [0] * len(recorded)  # rank 0 built even shards only
        assert build_cache_distributed(bb, TEXTS, out, rank=0, world_size=2, **KW) is None
        assert len(calls) == n0  # resumed: every shard of rank 0 already done
        assert build_cache_distributed(bb, TEXTS, out, rank=1, world_size=2, **KW) is None
        n01 = len(calls)
        merged = merge_cache(bb, TEXTS, out, batch_size=KW["batch_size"], shard_tokens=KW["shard_tokens"],
                             show_progress=False)
    finally:
        torch.set_num_threads(2)
    assert len(calls) == n01  # merge encodes nothing
    assert _files(out) == _files(single.path) and merged.key == single.key
    with pytest.raises(ValueError, match="process group"):
        build_cache_distributed(bb, TEXTS, tmp_path / "x", rank=1, world_size=2, overwrite=True, **KW)


def test_resolve_rank_and_local_rows(monkeypatch):
    from glotpool.training.ddp import local_rows

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_rank() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (3, 4) and resolve_rank(1, 2) == (1, 2)
    with pytest.raises(ValueError, match="rank"):
        resolve_rank(2, 2)
    rows = np.array([7, 8, 9, 10, 11])
    parts = [local_rows(rows, r, 3) for r in range(3)]  # m = 2: [7 8] [9 10] [11 pad]
    assert [p.tolist() for p in parts] == [[7, 8], [9, 10], [11, 7]]
    assert np.concatenate(parts)[:5].tolist() == rows.tolist()
    assert [local_rows(np.array([4]), r, 2).tolist() for r in range(2)] == [[4], [4]]  # empty rank pads


def test_iter_texts_streaming_splits_disjointly(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text("".join(json.dumps({"text": f"sentence {i} .", "id": i}) + "\n" for i in range(11)))
    parts = [list(iter_texts_streaming(str(f), "text", rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(f"sentence {i} ." for i in range(11))
    assert sum(len(p) for p in parts) == 11 and all(3 <= len(p) <= 4 for p in parts)
    with pytest.raises(ValueError, match="no column 'sentence'"):
        list(iter_texts_streaming(str(f), "sentence", rank=0, world_size=1))
    with pytest.raises(FileNotFoundError):
        list(iter_texts_streaming(str(tmp_path / "missing.jsonl"), rank=0, world_size=1))


# ------------------------------------------------------------------------------------------------ training


def _synthetic_cache(path: Path, n: int = 90, dim: int = 16, seed: int = 0, layers: tuple = ()) -> None:
    """A valid cache folder without a backbone: one float32 shard of random token states, ragged lengths 2..11;
    with ``layers``, a multi-layer cache holding those hidden-state indices (shard ``[T, K, D]``)."""
    from glotpool.states.cache import FORMAT, VERSION, _write_shard

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 12, (n,), generator=g).tolist()
    states = torch.randn(sum(lengths), *([len(layers)] if layers else []), dim, generator=g)
    path.mkdir(parents=True, exist_ok=True)
    rec = _write_shard(path / "shard-00000.safetensors", states)
    atomic_write_json(path / "texts.json", [f"text {i}" for i in range(n)])
    offsets = np.cumsum([0] + lengths[:-1]).tolist()
    identity = {"backbone": {"num_layers": max(layers), "layers": list(layers)}} if layers else {}
    meta = {"dim": dim, "n": n, "store_dtype": "float32", "identity": identity}
    atomic_write_json(path / "index.json", {"format": FORMAT, "version": VERSION, "key": "synthetic", "meta": meta,
                                            "shards": [rec], "examples": {"shard": [0] * n, "offset": offsets,
                                                                          "length": lengths}})


def _synthetic_data(task: str, n: int):
    from glotpool.training.trainer import CachedSplit, CachedSplits

    rng = np.random.default_rng(1)
    tr, dv = np.arange(0, 61), np.arange(61, 81)  # 61 train rows: batches of 8 end with a 5-row batch
    if task == "single":
        y = rng.integers(0, 3, n)
        y[:40] = 0  # unbalanced -> class weights matter
        return CachedSplits("single", {"train": CachedSplit(tr, None, y[tr]), "dev": CachedSplit(dv, None, y[dv])},
                            label_names=["a", "b", "c"])
    perm = rng.permutation(n)  # retrieval: pairs (i, perm[i]); InfoNCE over in-batch negatives
    return CachedSplits("retrieval", {"train": CachedSplit(tr, perm[tr], None), "dev": CachedSplit(dv, perm[dv], None)})


MIX_LAYERS = (2, 4, 6)  # the multi-layer cache of the layer-mix case
CASES = [  # (task, pooler, options, class_weights, batch_size, layers): uneven last batches in all
    ("single", "adapool", {}, True, 8, None),
    ("retrieval", "glot", {"hidden_dim": 16, "num_layers": 1}, False, 12, None),
    ("single", "adapool", {"layer_mix": len(MIX_LAYERS)}, False, 8, "all"),  # a learned mix over 3 cached layers
]


def _train(caches, task, pooler_name, opts, class_weights, batch_size, layers, ddp: bool, out_dir=None):
    from glotpool.pooling import build_pooler
    from glotpool.training.heads import build_head
    from glotpool.training.ddp import train_pooler_ddp
    from glotpool.training.trainer import StateSelection, TrainConfig, seed_everything, train_pooler

    cache = caches[layers is not None]
    data = _synthetic_data(task, len(cache))
    seed_everything(0)
    pooler = build_pooler(pooler_name, in_dim=cache.dim, **opts)
    head = build_head(task, pooler.out_dim, **({"num_labels": 3} if task == "single" else {}))
    cfg = TrainConfig(epochs=3, batch_size=batch_size, lr=3e-3, patience=0, class_weights=class_weights,
                      show_progress=False, eval_batch_size=16)
    fn = train_pooler_ddp if ddp else train_pooler
    result = fn(pooler, head, cache, data, cfg, out_dir=out_dir, states=StateSelection(layers))
    state = {**{f"pooler.{k}": v for k, v in pooler.state_dict().items()},
             **{f"head.{k}": v for k, v in head.state_dict().items()}}
    return result, state


def _train_worker(rank, world, store, cache_dirs, out):
    _init(rank, world, store)
    caches = [open_cache(d) for d in cache_dirs]
    for j, case in enumerate(CASES):
        result, state = _train(caches, *case, ddp=True, out_dir=f"{out}/run{j}" if rank == 0 else None)
        torch.save({"result": result, "state": state}, f"{out}/rank{rank}-case{j}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_training_matches_single_process(tmp_path):
    cache_dirs = [str(tmp_path / "syn"), str(tmp_path / "syn-layers")]
    _synthetic_cache(tmp_path / "syn")
    _synthetic_cache(tmp_path / "syn-layers", layers=MIX_LAYERS)
    caches = [open_cache(d) for d in cache_dirs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        refs = [_train(caches, *case, ddp=False) for case in CASES]
    finally:
        torch.set_num_threads(threads)
    _spawn(_train_worker, 2, str(tmp_path / "store"), cache_dirs, str(tmp_path))
    for j, (ref_result, ref_state) in enumerate(refs):
        got = [torch.load(tmp_path / f"rank{r}-case{j}.pt", weights_only=False) for r in range(2)]
        for g in got:  # both ranks end with the single-process weights and history
            assert g["state"].keys() == ref_state.keys()
            for k, v in ref_state.items():
                torch.testing.assert_close(g["state"][k], v, atol=1e-5, rtol=1e-4, msg=f"case {j}: {k}")
            assert g["result"].best_epoch == ref_result.best_epoch
            np.testing.assert_allclose([h["loss"] for h in g["result"].history],
                                       [h["loss"] for h in ref_result.history], rtol=1e-5)
            assert g["result"].dev.keys() == ref_result.dev.keys()
            np.testing.assert_allclose(list(g["result"].dev.values()), list(ref_result.dev.values()), atol=1e-5)
        moved = any(not torch.equal(v, _train_init(j)[k]) for k, v in ref_state.items())
        assert moved, "training did not change the weights: the comparison would be vacuous"
        assert (tmp_path / f"run{j}" / "best" / "pooler").is_dir() and (tmp_path / f"run{j}" / "results.json").is_file()
    mix = refs[2][1]["pooler.layer_mix.scalars"]  # the mixed case trained its layer weights, the same on both ranks
    assert mix.shape == (len(MIX_LAYERS),) and not torch.allclose(mix, torch.zeros_like(mix))


def _train_init(j: int) -> dict:
    from glotpool.pooling import build_pooler
    from glotpool.training.heads import build_head

    from glotpool.training.trainer import seed_everything

    task, name, opts, _, _, _ = CASES[j]
    seed_everything(0)
    pooler = build_pooler(name, in_dim=16, **opts)
    head = build_head(task, pooler.out_dim, **({"num_labels": 3} if task == "single" else {}))
    return {**{f"pooler.{k}": v for k, v in pooler.state_dict().items()},
            **{f"head.{k}": v for k, v in head.state_dict().items()}}


def test_cli_train_without_launcher_falls_back_to_one_process(tmp_path, monkeypatch):
    from glotpool.cli import main as glotpool_main

    def main(argv):
        return glotpool_main(["dist", *argv])

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    _synthetic_cache(tmp_path / "syn")
    rows = "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(60))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    argv = ["train", "--cache", str(tmp_path / "syn"), "--data", str(tmp_path / "d.csv"), "--label-col", "label",
            "--pooler", "adapool", "--epochs", "2", "--batch-size", "8", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["pooler"] == "adapool" and rec["train_config"]["batch_size"] == 8 and rec["sizes"]["train"] == 28  # 60 rows: test 6; dev = about half the rest (< 200 rows)
    assert main(argv[:1] + ["--cache", str(tmp_path / "missing")] + argv[3:]) == 2  # clear error, no traceback
    # a multi-layer cache: the spec's state selection (here a learned mix of every cached layer) is what trains
    _synthetic_cache(tmp_path / "syn-layers", layers=MIX_LAYERS)
    mixed = [*argv[:2], str(tmp_path / "syn-layers"), *argv[3:8], "adapool:mix=all", *argv[9:]]
    mixed[mixed.index("--out") + 1] = str(tmp_path / "run-mix")
    assert main(mixed) == 0
    rec = json.loads((tmp_path / "run-mix" / "results.json").read_text())
    assert rec["states"]["layers"] == "all" and rec["pooler_config"]["layer_mix"] == len(MIX_LAYERS)
