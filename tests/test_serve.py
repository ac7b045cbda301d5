"""`glotpool serve` end to end: real uvicorn servers in subprocesses on 127.0.0.1, the official `openai` client and
httpx. Every load loop is bounded in count and time; every server is stopped at the end of the module.

Two servers (started together, to overlap their start-up):

- main:    glot (GLOT + single-sentence head), pair (GLOT + pair head), mean (minilm:mean); no key; one backbone
- limited: mean only, GLOTPOOL_API_KEY set, --max-queue 3, --auto-truncate, batching off; the last test (SIGTERM)
           stops it
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch

from glotpool.encoder import Encoder
from glotpool.pooling import build_pooler
from glotpool.serve.batching import Batcher, QueueFull, ShuttingDown
from glotpool.training.heads import build_head

DATA = Path(__file__).parent / "data" / "pang-lee" / "sentences.csv"
KEY = "test-key-123"
LONG = "word " * 300  # 302 tokens > MiniLM's max_length 256
HOST = "127.0.0.1"
COS = 0.9999


def _sentences() -> list[str]:
    import csv

    with open(DATA, encoding="utf-8", newline="") as f:
        return [r["text"].strip() for r in csv.DictReader(f)]


SENTS = _sentences()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict | None = None):
        self.name, self.port = name, _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log_dir / f"{name}.log"
        # float32: the reference is Encoder.encode's default (no autocast), whatever bf16 support the CPU has
        cmd = [sys.executable, "-m", "glotpool", "serve", "--host", HOST, "--port", str(self.port), "--threads", "1",
               "--dtype", "float32", "--log-level", "info", *args]
        full_env = {k: v for k, v in os.environ.items() if k != "GLOTPOOL_API_KEY"}
        full_env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
        self._log_f = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log_f, stderr=subprocess.STDOUT, env=full_env)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def wait_ready(self, timeout: float = 120.0) -> "Server":
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            assert self.proc.poll() is None, f"server {self.name} exited ({self.proc.returncode}):\n{self.tail()}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"server {self.name} not ready after {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_f.close()


# ----------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def model_dirs(minilm, tmp_path_factory):
    """A small random GLOT encoder with a 2-class head, and one with a 3-class pair head (saved folders)."""
    root = tmp_path_factory.mktemp("serve-models")
    torch.manual_seed(0)
    pool = build_pooler("glot", in_dim=minilm.dim, hidden_dim=32, num_layers=1)
    Encoder(minilm, pool, build_head("single", pool.out_dim, num_labels=2),
            label_names=["negative", "positive"]).save_pretrained(root / "glot")
    Encoder(minilm, pool, build_head("pair", pool.out_dim, num_labels=3),
            label_names=["entailment", "neutral", "contradiction"]).save_pretrained(root / "pair")
    return root


@pytest.fixture(scope="module")
def servers(tmp_path_factory, request):
    logs = tmp_path_factory.mktemp("serve-logs")
    # the limited server needs no model folder: start it first, so its start-up overlaps building the folders
    started = {"limited": Server("limited", ["--model", "mean=minilm:mean", "--max-queue", "3", "--auto-truncate",
                                             "--max-wait-ms", "0", "--max-batch-requests", "1"], logs,
                                 env={"GLOTPOOL_API_KEY": KEY})}
    try:
        dirs = request.getfixturevalue("model_dirs")
        started["main"] = Server("main", ["--model", f"glot={dirs / 'glot'}", "--model", f"pair={dirs / 'pair'}",
                                          "--model", "mean=minilm:mean", "--max-wait-ms", "30", "--max-inputs", "64"],
                                 logs)
        yield started
    finally:
        for s in started.values():  # SIGTERM all, then wait: they drain in parallel
            if s.proc.poll() is None:
                s.proc.terminate()
        for s in started.values():
            s.stop()


@pytest.fixture(scope="module")
def main(servers):
    return servers["main"].wait_ready()


@pytest.fixture(scope="module")
def limited(servers):
    return servers["limited"].wait_ready()


@pytest.fixture(scope="module")
def ref(minilm, model_dirs):
    """The same models in this process: what the server must reproduce."""
    return {"glot": Encoder.from_pretrained(model_dirs / "glot", backbone=minilm),
            "pair": Encoder.from_pretrained(model_dirs / "pair", backbone=minilm),
            "mean": Encoder(minilm, build_pooler("mean", in_dim=minilm.dim))}


def _client(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _cos_rows(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _assert_error(r: httpx.Response, status: int, code: str | None = None, text: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    if code is not None:
        assert err["code"] == code, err
    if text is not None:
        assert text in err["message"], err
    return err


# ----------------------------------------------------------------------------------------------------------------
# the batcher on its own (no model): budget, length sort, rows back to their requests


def test_batcher_splits_by_token_budget_and_returns_rows_in_order():
    seen = []

    def embed(features):  # a row's "vector" is its own id, so any mix-up shows
        seen.append([len(f["input_ids"]) for f in features])
        return torch.tensor([[float(f["id"]), float(len(f["input_ids"]))] for f in features])

    async def go():
        b = Batcher("fake", embed, max_batch_tokens=40, max_batch_requests=8, max_wait_ms=50, max_queue=10).start()
        reqs = []
        for r in range(4):
            lens = [3 + ((7 * r + 5 * i) % 17) for i in range(6)]
            feats = [{"input_ids": [0] * n, "id": 100 * r + i} for i, n in enumerate(lens)]
            reqs.append((feats, lens, b.submit(feats, lens)))
        outs = await asyncio.gather(*(f for _, _, f in reqs))
        assert b.close(5)
        return reqs, outs

    reqs, outs = asyncio.run(go())
    for (feats, lens, _), z in zip(reqs, outs):
        assert z[:, 0].tolist() == [float(f["id"]) for f in feats]        # each row back in its slot
        assert z[:, 1].tolist() == [float(n) for n in lens]
    assert sum(len(b) for b in seen) == 24
    for batch in seen:
        assert batch == sorted(batch, reverse=True)                        # longest first within a batch
        assert len(batch) == 1 or len(batch) * batch[0] <= 40              # padded tokens within the budget
    assert len(seen) < 24 and max(len(b) for b in seen) > 1                # requests were grouped


def test_batcher_queue_limit_and_close():
    gate = __import__("threading").Event()

    def embed(features):
        gate.wait(10)
        return torch.zeros(len(features), 2)

    async def go():
        b = Batcher("fake", embed, max_queue=2, max_wait_ms=0).start()
        f1 = b.submit([{"input_ids": [1]}], [1])
        f2 = b.submit([{"input_ids": [1]}], [1])
        with pytest.raises(QueueFull):
            b.submit([{"input_ids": [1]}], [1])
        gate.set()
        await asyncio.gather(f1, f2)
        assert b.unfinished == 0
        b.submit([{"input_ids": [1]}], [1])  # room again
        assert b.close(5)                     # drains the accepted one
        with pytest.raises(ShuttingDown):
            b.submit([{"input_ids": [1]}], [1])

    asyncio.run(go())


# ----------------------------------------------------------------------------------------------------------------
# embeddings


def test_embeddings_equal_encoder_encode_openai_client(main, ref):
    client = _client(main)
    texts = SENTS[:10] + ["a fine film .", "dull ."]
    for model in ("glot", "mean"):
        want = ref[model].encode(texts, normalize=True, show_progress=False)
        single = client.embeddings.create(model=model, input=texts[0])  # the client asks for base64 and decodes it
        assert len(single.data) == 1 and single.data[0].index == 0
        assert _cos_rows([single.data[0].embedding], want[:1])[0] >= COS
        many = client.embeddings.create(model=model, input=texts, encoding_format="float")
        assert [d.index for d in many.data] == list(range(len(texts)))
        got = np.array([d.embedding for d in many.data])
        assert got.shape == want.shape
        assert _cos_rows(got, want).min() >= COS                           # same vectors, input order
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalized by default
        assert many.model == model and many.object == "list"
        tok = ref[model].backbone.tokenizer(texts)["input_ids"]
        assert many.usage.prompt_tokens == many.usage.total_tokens == sum(len(t) for t in tok)


def test_base64_round_trips(main):
    body = {"model": "glot", "input": SENTS[20:25]}
    f = httpx.post(main.url + "/v1/embeddings", json={**body, "encoding_format": "float"}, timeout=60).json()
    b = httpx.post(main.url + "/v1/embeddings", json={**body, "encoding_format": "base64"}, timeout=60).json()
    for rf, rb in zip(f["data"], b["data"]):
        assert isinstance(rb["embedding"], str)
        dec = np.frombuffer(base64.b64decode(rb["embedding"]), dtype="<f4")
        assert dec.shape == (416,)
        np.testing.assert_allclose(dec, np.asarray(rf["embedding"], dtype=np.float32), rtol=0, atol=1e-6)


def test_tei_embed_route(main, ref):
    texts = ["a fine film .", LONG]
    r = httpx.post(main.url + "/embed", json={"model": "mean", "inputs": texts, "truncate": True}, timeout=60)
    assert r.status_code == 200, r.text
    want = ref["mean"].encode(texts, normalize=True, show_progress=False)
    assert _cos_rows(r.json(), want).min() >= COS
    _assert_error(httpx.post(main.url + "/embed", json={"model": "mean", "inputs": texts}, timeout=60), 413,
                  "input_too_long", "inputs[1]")


def test_dimensions_truncates_then_normalizes(main, ref):
    r = httpx.post(main.url + "/v1/embeddings", json={"model": "mean", "input": ["a fine film ."], "dimensions": 16},
                   timeout=60).json()
    got = np.asarray(r["data"][0]["embedding"])
    raw = ref["mean"].encode(["a fine film ."], show_progress=False)[0, :16]
    assert got.shape == (16,)
    np.testing.assert_allclose(got, raw / np.linalg.norm(raw), atol=1e-5)


def test_concurrent_requests_are_batched_without_mixing_rows(main, ref):
    rng = np.random.default_rng(1)
    reqs = [[SENTS[i] for i in rng.choice(len(SENTS), size=int(rng.integers(1, 7)), replace=False)]
            for _ in range(16)]
    used = sorted({t for r in reqs for t in r})
    want = dict(zip(used, ref["glot"].encode(used, normalize=True, show_progress=False)))

    def batches():
        m = httpx.get(main.url + "/metrics").text
        one = float(re.search(r'glotpool_batch_requests_bucket\{le="1.0",model="glot"\} (\S+)', m).group(1))
        total = float(re.search(r'glotpool_batch_requests_count\{model="glot"\} (\S+)', m).group(1))
        return one, total

    one0, total0 = batches()

    async def go():
        async with httpx.AsyncClient(base_url=main.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/embeddings", json={"model": "glot", "input": t}) for t in reqs))

    responses = asyncio.run(go())
    for texts, r in zip(reqs, responses):
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == list(range(len(texts)))
        assert _cos_rows([d["embedding"] for d in data], [want[t] for t in texts]).min() >= COS
    one, total = batches()
    assert total - total0 < len(reqs)          # fewer backbone batches than requests ...
    assert (total - total0) - (one - one0) >= 1  # ... and at least one batch mixed several requests


# ----------------------------------------------------------------------------------------------------------------
# classify, similarity, models, health, metrics


def test_classify_single_and_pair(main, ref):
    texts = SENTS[30:36]
    r = httpx.post(main.url + "/v1/classify", json={"model": "glot", "input": texts}, timeout=60).json()
    want = ref["glot"].predict_proba(texts)
    assert r["labels"] == ["negative", "positive"]
    np.testing.assert_allclose([d["probs"] for d in r["data"]], want, atol=1e-4)
    assert [d["label"] for d in r["data"]] == ref["glot"].predict(texts)
    a, b = SENTS[40:44], SENTS[50:54]
    r = httpx.post(main.url + "/v1/classify", json={"model": "pair", "input": [list(p) for p in zip(a, b)]},
                   timeout=60).json()
    np.testing.assert_allclose([d["probs"] for d in r["data"]], ref["pair"].predict_proba(a, b), atol=1e-4)
    assert [d["index"] for d in r["data"]] == [0, 1, 2, 3]


def test_similarity_pairs_and_matrix(main, ref):
    a, b = SENTS[60:63], SENTS[70:73]
    r = httpx.post(main.url + "/v1/similarity", json={"model": "mean", "pairs": [list(p) for p in zip(a, b)]},
                   timeout=60).json()
    np.testing.assert_allclose([d["score"] for d in r["data"]], ref["mean"].similarity(a, b), atol=1e-4)
    r = httpx.post(main.url + "/v1/similarity", json={"model": "glot", "input": a, "input2": b}, timeout=60).json()
    za = ref["glot"].encode(a, normalize=True, show_progress=False)
    zb = ref["glot"].encode(b, normalize=True, show_progress=False)
    np.testing.assert_allclose([d["scores"] for d in r["data"]], za @ zb.T, atol=1e-4)


def test_models_health_and_metrics(main):
    models = _client(main).models.list()
    assert sorted(m.id for m in models.data) == ["glot", "mean", "pair"]
    card = httpx.get(main.url + "/v1/models/pair").json()
    assert card["dim"] == 416 and card["pair"] is True and card["labels"][0] == "entailment"
    h = httpx.get(main.url + "/health").json()
    assert h["status"] == "ok" and h["backbones"] == 1   # three models, one shared MiniLM
    httpx.post(main.url + "/v1/embeddings", json={"model": "mean", "input": "x y"})
    m = httpx.get(main.url + "/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert re.search(r'glotpool_requests_total\{endpoint="/v1/embeddings",method="POST",status="200"\} [1-9]', text)
    assert re.search(r'glotpool_request_duration_seconds_count\{endpoint="/v1/embeddings",method="POST",'
                     r'status="200"\} [1-9]', text)
    for name in ("glotpool_batch_size_bucket", "glotpool_batch_tokens_bucket", "glotpool_queue_depth{"):
        assert f'{name}' in text and 'model="mean"' in text, name


# ----------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("path, body, status, code, text", [
    ("/v1/embeddings", b'{"model": "mean", "input": ', 400, "invalid_json", "not valid JSON"),
    ("/v1/embeddings", {"model": "mean", "input": [1, 2]}, 422, "invalid_type", None),
    ("/v1/embeddings", {"model": "mean"}, 422, "missing_field", None),
    ("/v1/embeddings", {"model": "mean", "input": "a", "encoding_format": "hex"}, 422, "invalid_type", None),
    ("/v1/embeddings", {"model": "mean", "input": []}, 400, "empty_input", None),
    ("/v1/embeddings", {"model": "mean", "input": ["ok", "fine", "  \n "]}, 400, "empty_input", "input[2]"),
    ("/v1/embeddings", {"model": "mean", "input": ""}, 400, "empty_input", "input[0]"),
    ("/v1/embeddings", {"model": "nope", "input": "a"}, 404, "model_not_found", "glot, pair, mean"),
    ("/v1/embeddings", {"input": "a"}, 400, "missing_model", None),
    ("/v1/embeddings", {"model": "mean", "input": ["a"] * 65}, 413, "too_many_inputs", "at most 64"),
    ("/v1/embeddings", {"model": "mean", "input": ["ok", LONG]}, 413, "input_too_long", "input[1] (302 tokens)"),
    ("/v1/embeddings", {"model": "mean", "input": "a", "dimensions": 999}, 400, "invalid_value", "dimensions"),
    ("/v1/classify", {"model": "mean", "input": ["a"]}, 400, "not_a_classifier", None),
    ("/v1/classify", {"model": "pair", "input": ["a", "b"]}, 400, "invalid_value", "pair"),
    ("/v1/classify", {"model": "pair", "input": [["a", " "]]}, 400, "empty_input", "input[0][1]"),
    ("/v1/similarity", {"model": "mean", "pairs": [["a", "b", "c"]]}, 400, "invalid_value", "pairs[0]"),
    ("/v1/nothing-here", {}, 404, "not_found", None),
])
def test_error_statuses_and_shape(main, path, body, status, code, text):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else \
        {"json": body}
    _assert_error(httpx.post(main.url + path, timeout=60, **kw), status, code, text)


def test_openai_client_raises_on_unknown_model(main):
    with pytest.raises(openai.NotFoundError) as e:
        _client(main).embeddings.create(model="nope", input="a")
    assert "mean" in str(e.value)


# ----------------------------------------------------------------------------------------------------------------
# auth, auto-truncate, backpressure (the limited server)


def test_api_key(limited, main, ref):
    r = httpx.post(limited.url + "/v1/embeddings", json={"model": "mean", "input": "a"})
    _assert_error(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    _assert_error(httpx.post(limited.url + "/v1/embeddings", json={"model": "mean", "input": "a"},
                             headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    _assert_error(httpx.get(limited.url + "/v1/models"), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        _client(limited, "wrong").embeddings.create(model="mean", input="a")
    out = _client(limited, KEY).embeddings.create(model="mean", input=["a fine film ."])
    want = ref["mean"].encode(["a fine film ."], normalize=True, show_progress=False)
    assert _cos_rows([out.data[0].embedding], want)[0] >= COS
    assert httpx.get(limited.url + "/health").status_code == 200      # probes and scrapers need no key
    assert httpx.get(limited.url + "/metrics").status_code == 200
    assert httpx.post(main.url + "/v1/embeddings", json={"model": "mean", "input": "a"}).status_code == 200  # off


def test_auto_truncate(limited, ref):
    want = ref["mean"].encode([LONG], normalize=True, show_progress=False)  # encode truncates at max_length
    r = httpx.post(limited.url + "/v1/embeddings", json={"model": "mean", "input": [LONG]},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 256
    assert _cos_rows([r.json()["data"][0]["embedding"]], want)[0] >= COS


def test_queue_overflow_gives_429_and_accepted_requests_complete(limited, ref):
    reqs = [SENTS[4 * i:4 * i + 4] for i in range(12)]
    want = dict(zip(SENTS[:48], ref["mean"].encode(SENTS[:48], normalize=True, show_progress=False)))

    async def go():
        async with httpx.AsyncClient(base_url=limited.url, timeout=60,
                                     headers={"Authorization": f"Bearer {KEY}"}) as c:
            return await asyncio.gather(*(c.post("/v1/embeddings", json={"model": "mean", "input": t})
                                          for t in reqs))

    responses = asyncio.run(go())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 3, statuses
    for texts, r in zip(reqs, responses):
        if r.status_code == 429:
            _assert_error(r, 429, "queue_full")
            assert int(r.headers["retry-after"]) >= 1
        else:
            got = [d["embedding"] for d in r.json()["data"]]
            assert _cos_rows(got, [want[t] for t in texts]).min() >= COS
    again = httpx.post(limited.url + "/v1/embeddings", json={"model": "mean", "input": "a"},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert again.status_code == 200                                    # the queue drained


def test_cli_rejects_a_bad_model_spec(capsys):
    from glotpool.cli import main as cli_main

    assert cli_main(["serve", "--model", "no-equals-sign"]) == 2
    assert "expected NAME=PATH" in capsys.readouterr().err
    assert cli_main(["serve", "--model", "m=minilm:glot"]) == 2          # a learned pooler, untrained: refused
    assert "learned pooler" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# graceful shutdown


def test_sigterm_drains_accepted_requests(limited, ref):
    """Last test of the module: it stops the limited server (3 requests fit its queue)."""
    srv, auth = limited, {"Authorization": f"Bearer {KEY}"}
    reqs = [SENTS[100 + 8 * i:108 + 8 * i] for i in range(3)]
    want = dict(zip(SENTS[100:124], ref["mean"].encode(SENTS[100:124], normalize=True, show_progress=False)))

    def in_flight() -> float:
        m = httpx.get(srv.url + "/metrics", timeout=5).text
        return float(re.search(r'glotpool_requests_in_flight\{model="mean"\} (\S+)', m).group(1))

    async def go():
        async with httpx.AsyncClient(base_url=srv.url, timeout=60, headers=auth) as c:
            tasks = [asyncio.create_task(c.post("/v1/embeddings", json={"model": "mean", "input": t})) for t in reqs]
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30:  # every request accepted (or already answered)?
                done = sum(t.done() for t in tasks)
                flying = await asyncio.to_thread(in_flight)
                if done + flying >= len(reqs):
                    break
                await asyncio.sleep(0.02)
            pending_at_signal = len(reqs) - sum(t.done() for t in tasks)
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            refused = False
            try:
                await asyncio.to_thread(httpx.post, srv.url + "/v1/embeddings", json={"model": "mean", "input": "a"},
                                        headers=auth, timeout=5)
            except httpx.TransportError:
                refused = True
            return pending_at_signal, refused, await asyncio.gather(*tasks)

    pending_at_signal, refused, responses = asyncio.run(go())
    assert pending_at_signal >= 1, "every request finished before SIGTERM: the test proved nothing"
    for texts, r in zip(reqs, responses):
        assert r.status_code == 200, r.text
        got = [d["embedding"] for d in r.json()["data"]]
        assert _cos_rows(got, [want[t] for t in texts]).min() >= COS
    assert refused, "the server still accepted new connections after SIGTERM"
    assert srv.proc.wait(30) == 0, srv.tail()
