"""Hidden-state cache: round trip vs live forwards, reuse, stale keys, corruption, kill-and-resume, CLI."""
import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from glotpool.states.backbone import load_backbone, token_lengths  # noqa: E402
from glotpool.states.cache import TokenCache, build_cache, cache_key, open_cache, plan_shards  # noqa: E402

_SUBJ = ["the movie", "this film", "a quiet story", "the cast", "its second half", "the soundtrack",
         "an old man", "the director"]
_PRED = ["is great", "falls flat", "never quite finds its rhythm", "moved me to tears",
         "is a clumsy mix of comedy and melodrama that overstays its welcome by at least forty minutes"]
TEXTS = [f"{_SUBJ[i % 8]} {_PRED[i % 5]}" + " , really" * (i % 4) + " ." for i in range(40)]
KW = dict(batch_size=4, shard_tokens=60, show_progress=False)  # ~40 texts -> several tiny shards


def _masked_mean(h, m):
    m = m.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def _files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # file-hash memo goes to a temp home
        mp.setenv("GLOTPOOL_HOME", os.environ.get("GLOTPOOL_HOME") or str(tmp_path_factory.mktemp("home")))
        yield load_backbone("minilm")


@pytest.fixture(scope="module")
def built(bb, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    return build_cache(bb, TEXTS, out, **KW)


@pytest.mark.slow
def test_round_trip_matches_live_forward(bb, built):
    cache = built
    assert len(cache) == len(TEXTS) and cache.dim == 384 and len(list(cache.path.glob("shard-*"))) >= 4
    assert cache.meta["store_dtype"] == "float16" and cache.meta["n"] == 40
    lengths = token_lengths(bb, TEXTS)
    assert cache.lengths.tolist() == lengths
    idx = [3, 0, 39, 17, 17, 8, 25]  # shuffled, a repeat, spans several shards
    h, m = cache.batch(idx)
    assert h.dtype == torch.float32 and m.dtype == torch.long and h.shape == (7, max(lengths[i] for i in idx), 384)
    assert m.sum(1).tolist() == [lengths[i] for i in idx]
    assert (h[m == 0] == 0).all()  # right padding with zeros
    live_h, live_m = bb.encode([TEXTS[i] for i in idx])
    torch.testing.assert_close(_masked_mean(h, m), _masked_mean(live_h, live_m), atol=2e-3, rtol=0)
    for i in (0, 17, 39):  # ragged storage: exactly the real tokens, nothing else
        alone, _ = bb.encode([TEXTS[i]])
        got = cache.get(i)
        assert got.dtype == torch.float16 and got.shape == alone[0].shape
        torch.testing.assert_close(got.float(), alone[0], atol=5e-3, rtol=2e-3)
    assert cache.batch([5], dtype=torch.bfloat16)[0].dtype == torch.bfloat16


@pytest.mark.slow
def test_reuse_does_not_run_backbone(bb, built, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("backbone ran on a complete cache")
    monkeypatch.setattr(bb, "forward_batch", boom)
    again = build_cache(bb, TEXTS, built.path, **KW)
    assert again.key == built.key and again.lengths.tolist() == built.lengths.tolist()


@pytest.mark.slow
def test_stale_key_raises_and_overwrite_rebuilds(bb, built, tmp_path):
    with pytest.raises(ValueError, match=r"layer: cached 6, requested 5.*overwrite=True"):
        build_cache(load_backbone("minilm", layer=-2), TEXTS, built.path, **KW)
    with pytest.raises(ValueError, match="texts differ"):
        build_cache(bb, TEXTS[:-1] + ["something else ."], built.path, **KW)
    with pytest.raises(ValueError, match="store_dtype: cached 'float16', requested 'float32'"):
        build_cache(bb, TEXTS, built.path, **{**KW, "store_dtype": "float32"})
    out = tmp_path / "c"
    shutil.copytree(built.path, out)
    (out / "notes.txt").write_text("user file")
    small = build_cache(bb, TEXTS[:5], out, overwrite=True, **KW)
    assert len(small) == 5 and (out / "notes.txt").read_text() == "user file"  # only cache files replaced
    assert len(list(out.glob("shard-*"))) == len(json.loads((out / "index.json").read_text())["shards"])  # no strays


def test_cache_key_sensitive():
    k = cache_key({"layer": 6}, "abc", "float16")
    assert len(k) == 64 and k == cache_key({"layer": 6}, "abc", "float16")
    assert len({k, cache_key({"layer": 5}, "abc", "float16"), cache_key({"layer": 6}, "abd", "float16"),
                cache_key({"layer": 6}, "abc", "float32")}) == 4


@pytest.mark.slow
def test_corrupt_or_truncated_shard_named(built, tmp_path):
    for how in ("flip", "truncate", "delete"):
        out = tmp_path / how
        shutil.copytree(built.path, out)
        shard = out / "shard-00001.safetensors"
        data = bytearray(shard.read_bytes())
        if how == "flip":
            data[len(data) // 2] ^= 0xFF
            shard.write_bytes(bytes(data))
        elif how == "truncate":
            shard.write_bytes(bytes(data[:-100]))
        else:
            shard.unlink()
        with pytest.raises(ValueError, match=r"shard-00001\.safetensors.*glotpool cache"):
            open_cache(out)
    assert len(open_cache(tmp_path / "flip", verify=False)) == 40  # sizes intact: only the hash check sees it


def test_open_missing_or_unfinished(tmp_path):
    with pytest.raises(FileNotFoundError, match="glotpool cache"):
        open_cache(tmp_path)
    (tmp_path / "progress.json").write_text("{}")
    with pytest.raises(ValueError, match="unfinished"):
        open_cache(tmp_path)


@pytest.mark.slow
def test_bad_texts(bb, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        build_cache(bb, ["ok .", "  "], tmp_path / "x", **KW)
    with pytest.raises(ValueError, match="strings"):
        build_cache(bb, [("a", "b")], tmp_path / "x", **KW)
    with pytest.raises(ValueError, match="store_dtype"):
        build_cache(bb, ["ok ."], tmp_path / "x", store_dtype="int8")


def test_plan_is_deterministic_and_batch_aligned():
    lengths = [5, 9, 2, 9, 7, 1, 3]
    plan = plan_shards(lengths, batch_size=2, shard_tokens=10)
    assert plan == [[[1, 3]], [[4, 0]], [[6, 2], [5]]]
    assert plan == plan_shards(lengths, batch_size=2, shard_tokens=10)


@pytest.mark.slow
def test_kill_and_resume_is_byte_identical(bb, built, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_cache_worker.py")), str(out), "2",
         str(KW["batch_size"]), str(KW["shard_tokens"])],
        input=json.dumps(TEXTS), text=True, capture_output=True, env=env, timeout=300)
    assert proc.returncode == -9, proc.stderr  # SIGKILLed right after its 2nd shard
    assert not (out / "index.json").exists() and (out / "progress.json").exists()
    assert len(json.loads((out / "progress.json").read_text())["done"]) == 1  # 2nd shard written, not recorded
    with pytest.raises(ValueError, match="unfinished"):
        open_cache(out)

    calls = []
    real = bb.forward_batch
    monkeypatch.setattr(bb, "forward_batch", lambda batch: calls.append(1) or real(batch))
    resumed = build_cache(bb, TEXTS, out, **KW)
    n_plan = sum(len(s) for s in plan_shards(token_lengths(bb, TEXTS), KW["batch_size"], KW["shard_tokens"]))
    n_first = len(plan_shards(token_lengths(bb, TEXTS), KW["batch_size"], KW["shard_tokens"])[0])
    assert len(calls) == n_plan - n_first  # resumed after the one recorded shard
    assert _files(out) == _files(built.path)  # shards, texts and index byte-identical to an uninterrupted build
    assert resumed.key == built.key


def test_token_cache_pickles_and_lookup(built):
    c2 = pickle.loads(pickle.dumps(built))
    assert isinstance(c2, TokenCache)
    torch.testing.assert_close(c2.get(7), built.get(7))
    assert built.lookup([TEXTS[9], TEXTS[2]]) == [9, 2]
    with pytest.raises(ValueError, match="not in cache"):
        built.lookup(["never cached"])
    with pytest.raises(IndexError):
        built.get(40)


@pytest.mark.slow
def test_cli_caches_unique_texts_of_two_columns(bb, tmp_path):
    from glotpool.cli import cache as cli_cache
    data = tmp_path / "pairs.csv"
    rows = [("a dog runs .", "an animal moves ."), ("a dog runs .", "a cat sleeps ."), ("a cat sleeps .", "no .")]
    data.write_text("premise,hypothesis,label\n" + "".join(f"{a},{b},x\n" for a, b in rows))
    parser = argparse.ArgumentParser()
    cli_cache.register(parser.add_subparsers())
    out = tmp_path / "c"
    args = parser.parse_args(["cache", "--data", str(data), "--out", str(out), "--text-col", "premise",
                              "--text-col-2", "hypothesis", "--batch-size", "2", "--quiet"])
    assert args.func(args) == 0
    cache = open_cache(out)
    assert cache.texts == ["a dog runs .", "a cat sleeps .", "an animal moves .", "no ."]
    assert cache.meta["extra"]["columns"] == ["premise", "hypothesis"]
    assert cache.meta["extra"]["rows"] == 3
