"""Speed and peak memory of GLOT pooling: dense batched vs the per-sentence sparse formulation vs mean pooling.

    python benchmarks/bench_pooling.py                  # B=32 L=128 D=768 K=2 F=256; gat, gcn, gin; tau 0.3, 0.6
    python benchmarks/bench_pooling.py --convs gat --threads 2 --json results.json
    python benchmarks/bench_pooling.py --quick              # tiny sizes, seconds (smoke test)

Methods
-------
``dense``         :class:`glotpool.GLOTPooling`: one padded ``[B, L, L]`` graph per batch, PyG dense layers.
``per_sentence``  :class:`reference.PerSentenceGLOT`: a Python loop building one PyG ``edge_index`` graph
                  per sentence and running PyG's sparse layers (what the paper's code does). Same weights.
``mean``          mean pooling (no parameters: forward only).

Inputs
------
Frozen states with realistic similarity structure, so the threshold graphs have the density real encoder states
give (all-MiniLM-L6-v2 on ordinary sentences: ~30-60 % of pairs at tau=0.3, ~10-20 % at tau=0.6)::

    h_i = a_i · s + b_i · t_{c(i)} + ε_i,     a_i, b_i ~ U(0, 2),  s, t_c, ε_i ~ N(0, I_D)

with ``s`` a direction shared by the whole sentence, ``t_c`` one of 8 per-sentence "topics", and real lengths drawn
uniformly from ``[min_len, L]`` (right padding). The mean edges per real token (self-loop included) is printed.

Measurements
------------
* time: warm-up runs, then the median of ``--repeats`` runs, dense and per-sentence interleaved run by run (so a
  change in machine load hits both alike). ``fwd`` runs under ``torch.no_grad`` (inference);
  ``fwd+bwd`` is a training step's forward + ``backward()`` of ``z.pow(2).sum()`` w.r.t. the pooler's parameters
  (the states are frozen, so they get no gradient).
* peak memory, CPU: each configuration's first calls run in a forked child process; the peak is its RSS high-water
  mark (``getrusage().ru_maxrss``) minus its RSS before the first call, for fwd then fwd+bwd (the high-water mark
  is monotone, so fwd+bwd is reported as max(fwd, fwd+bwd)). It includes allocator slack. CUDA:
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
* GFLOP/s of the dense path from an analytic count of its matmul FLOPs (padding included, since the dense path
  computes on it; N = B·L tokens, U = D + K·F, R = readout width)::

      graph      2·B·L²·D                              (cosine similarities; no gradient)
      layer k    2·N·d_in·F  (+ 2·N·F·F for GIN's 2nd linear)  +  2·B·L²·F (aggregation A·X)
                 (+ 2·2·N·F for GAT's two attention logits)
      readout    2·N·U·R + 2·N·R + 2·N·U               (score MLP, weighted sum)
      backward   2 × (forward minus graph) − 2·N·D·F   (grads w.r.t. inputs and weights of every matmul, except
                                                       the input gradient of layer 1's linear: the states are frozen)

Threads: ``--threads`` (default 1) sets ``torch.set_num_threads``; 1 thread gives stable numbers on a shared machine.

Findings (CPU, 1 thread, AVX-512, 2026-11; see the issue for the tables)
-----------------------------------------------------------------------
On CPU the dense path is compute-bound: ~50-65 GFLOP/s in fp32 on one thread, and 82 % of its fwd+bwd time is
matmul. Two thirds of its FLOPs are the readout's ``[N, U] x [U, R]`` product (U = 1280, R = 640), which the
per-sentence loop also computes (on the real tokens only, ~75 % of them here). So batching can only remove the
loop's per-sentence overhead, and the measured speed-up is 1-4x (fwd) and 1-2.3x (fwd+bwd), not 20x. A
hand-written single-head dense GAT (no ``[B, N, N, H]`` layout) was 13-19 % faster per layer but only 3-4 %
end to end, inside this shared machine's run-to-run noise, so ``gnn.make_conv`` keeps PyG's ``DenseGATConv``.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, replace

import sys
from pathlib import Path

import torch
from _common import fwd, fwd_bwd, run_forked

# the independent per-sentence formulation is a test oracle: it lives in tests/, not in the library
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


@dataclass
class Sizes:
    batch: int = 32
    max_len: int = 128
    min_len: int = 64
    dim: int = 768
    hidden: int = 256
    layers: int = 2
    topics: int = 8
    seed: int = 0


QUICK = Sizes(batch=4, max_len=16, min_len=8, dim=32, hidden=16, layers=2)


def make_inputs(s: Sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """``h [B, L, D]`` (float32) and ``mask [B, L]`` (long, right padding); see the module docstring."""
    g = torch.Generator().manual_seed(s.seed)
    B, L, D = s.batch, s.max_len, s.dim
    n = torch.randint(s.min_len, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None] < n[:, None]).long()
    shared = torch.randn(B, 1, D, generator=g)
    topics = torch.randn(B, s.topics, D, generator=g)
    topic_of = torch.randint(0, s.topics, (B, L), generator=g)
    a = torch.rand(B, L, 1, generator=g) * 2.0
    b = torch.rand(B, L, 1, generator=g) * 2.0
    topic = torch.gather(topics, 1, topic_of[..., None].expand(B, L, D))
    h = a * shared + b * topic + torch.randn(B, L, D, generator=g)
    return h, mask


def dense_flops(s: Sizes, conv: str) -> tuple[float, float]:
    """Analytic matmul FLOPs ``(fwd, fwd+bwd)`` of the dense GLOT path (see the module docstring)."""
    B, L, D, F, K = s.batch, s.max_len, s.dim, s.hidden, s.layers
    N = B * L
    U = D + K * F
    R = max(128, U // 2)
    graph = 2 * B * L * L * D
    layers = 0
    for k in range(K):
        d_in = D if k == 0 else F
        layers += 2 * N * d_in * F + 2 * B * L * L * F
        if conv == "gin":
            layers += 2 * N * F * F
        if conv == "gat":
            layers += 2 * 2 * N * F
    readout = 2 * N * U * R + 2 * N * R + 2 * N * U
    fwd = graph + layers + readout
    bwd = 2 * (layers + readout) - 2 * N * D * F
    return float(fwd), float(fwd + bwd)


# ----------------------------------------------------------------------------------------------------------------
# measurements


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _build(method: str, conv: str, tau: float, s: Sizes) -> torch.nn.Module:
    """The pooler of ``method``; dense and per-sentence built from the same seed hold the same weights."""
    from glotpool import build_pooler
    from reference import PerSentenceGLOT

    torch.manual_seed(s.seed)
    if method == "mean":
        return build_pooler("mean", in_dim=s.dim)
    dense = build_pooler("glot", in_dim=s.dim, hidden_dim=s.hidden, num_layers=s.layers, conv=conv, tau=tau)
    return dense if method == "dense" else PerSentenceGLOT.from_dense(dense)


def _trainable(pool) -> bool:
    return any(p.requires_grad for p in pool.parameters())


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_memory(method: str, conv: str, tau: float, s: Sizes, device: str, threads: int) -> dict:
    """Peak memory (MiB) of the first fwd and the first fwd+bwd of one pooler, plus the graph's edges per token."""
    from glotpool.pooling.graph import build_graph, edges_per_token

    torch.set_num_threads(threads)
    h, mask = (t.to(device) for t in make_inputs(s))
    pool = _build(method, conv, tau, s).to(device)

    def peak(fn) -> float:
        if device.startswith("cuda"):
            _sync(device)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn(pool, h, mask)
            _sync(device)
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        base = _rss_kib()
        fn(pool, h, mask)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024

    out = {"edges_per_token": None}
    if method != "mean":
        m = mask.bool()
        out["edges_per_token"] = float(edges_per_token(build_graph(h, m, tau=tau), m).mean())
    out["peak_fwd_mib"] = peak(fwd)
    out["peak_fwd_bwd_mib"] = peak(fwd_bwd) if _trainable(pool) else None
    if not device.startswith("cuda") and out["peak_fwd_bwd_mib"] is not None:
        out["peak_fwd_bwd_mib"] = max(out["peak_fwd_bwd_mib"], out["peak_fwd_mib"])  # ru_maxrss is monotone
    return out


def measure_times(methods: list[str], conv: str, tau: float, s: Sizes, device: str, threads: int, repeats: int,
                  warmup: int) -> dict[str, dict]:
    """Median ms of fwd and fwd+bwd for each method, with the methods' runs interleaved (dense, per-sentence,
    dense, ...), so a change in machine load hits all of them alike and their ratio stays meaningful."""
    torch.set_num_threads(threads)
    h, mask = (t.to(device) for t in make_inputs(s))
    pools = {m: _build(m, conv, tau, s).to(device) for m in methods}
    times = {m: {"fwd": [], "fwd_bwd": []} for m in methods}
    for i in range(warmup + repeats):
        for kind, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
            for m, pool in pools.items():
                if kind == "fwd_bwd" and not _trainable(pool):
                    continue
                _sync(device)
                t0 = time.perf_counter()
                fn(pool, h, mask)
                _sync(device)
                if i >= warmup:
                    times[m][kind].append((time.perf_counter() - t0) * 1e3)
    return {m: {"fwd_ms": statistics.median(t["fwd"]),
                "fwd_bwd_ms": statistics.median(t["fwd_bwd"]) if t["fwd_bwd"] else None} for m, t in times.items()}


def memory_isolated(**kwargs) -> dict:
    """``measure_memory`` in a forked child, so its RSS high-water mark belongs to this configuration alone."""
    status, payload, _ = run_forked(measure_memory, **kwargs)
    if status != "ok":
        raise RuntimeError(f"benchmark child failed for {kwargs['method']}/{kwargs['conv']}/{kwargs['tau']}: "
                           f"{payload}")
    return payload


# ----------------------------------------------------------------------------------------------------------------
# report


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def print_table(results: list[dict], s: Sizes, device: str) -> None:
    rows = [r for r in results if r["device"] == device]
    print(f"\n== device={device}  threads={rows[0]['threads']}  B={s.batch} L={s.max_len} "
          f"(real {s.min_len}..{s.max_len}) D={s.dim} K={s.layers} F={s.hidden} ==")
    head = (f"{'conv':5} {'tau':>4} {'edges/tok':>9} {'method':13} {'fwd ms':>9} {'f+b ms':>9} {'peak fwd MiB':>12} "
            f"{'peak f+b MiB':>12} {'GFLOP/s fwd':>11} {'GFLOP/s f+b':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        gf = gfb = None
        if r["method"] == "dense":
            f, fb = dense_flops(s, r["conv"])
            gf, gfb = f / r["fwd_ms"] / 1e6, fb / r["fwd_bwd_ms"] / 1e6
        conv = "-" if r["method"] == "mean" else r["conv"]
        tau = "-" if r["method"] == "mean" else f"{r['tau']:.1f}"
        print(f"{conv:5} {tau:>4} {_fmt(r.get('edges_per_token')):>9} {r['method']:13} {_fmt(r['fwd_ms'], '.2f'):>9} "
              f"{_fmt(r['fwd_bwd_ms'], '.2f'):>9} {_fmt(r['peak_fwd_mib']):>12} {_fmt(r['peak_fwd_bwd_mib']):>12} "
              f"{_fmt(gf):>11} {_fmt(gfb):>11}")
    print("\nspeed-up of dense over per-sentence (same run, same weights, same inputs):")
    for r in rows:
        if r["method"] != "dense":
            continue
        ref = next(x for x in rows if x["method"] == "per_sentence" and x["conv"] == r["conv"] and x["tau"] == r["tau"])
        print(f"  {r['conv']:5} tau={r['tau']:.1f}:  fwd {ref['fwd_ms'] / r['fwd_ms']:6.2f}x   "
              f"fwd+bwd {ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:6.2f}x")
    for conv in sorted({r["conv"] for r in rows if r["method"] == "dense"}):
        f, fb = dense_flops(s, conv)
        print(f"  dense {conv} matmul FLOPs (analytic): fwd {f / 1e9:.4g} GFLOP, fwd+bwd {fb / 1e9:.4g} GFLOP")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats (smoke test)")
    p.add_argument("--convs", default="gat,gcn,gin", help="comma-separated convs (default gat,gcn,gin)")
    p.add_argument("--taus", default="0.3,0.6", help="comma-separated thresholds (default 0.3,0.6)")
    p.add_argument("--devices", default="auto", help="cpu, cuda, or auto (= cpu, plus cuda when available)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: stable numbers)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int)
    p.add_argument("--max-len", type=int)
    p.add_argument("--min-len", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--no-isolate", action="store_true",
                   help="run every CPU configuration in this process (faster start, no CPU memory numbers)")
    p.add_argument("--json", help="also write the raw results to this JSON file")
    a = p.parse_args(argv)

    s = QUICK if a.quick else Sizes()
    s = replace(s, **{k: v for k, v in dict(batch=a.batch, max_len=a.max_len, min_len=a.min_len, dim=a.dim,
                                              hidden=a.hidden, layers=a.layers).items() if v is not None})
    if not 1 <= s.min_len <= s.max_len:
        p.error(f"need 1 <= --min-len <= --max-len, got {s.min_len}, {s.max_len}")
    if a.threads < 1 or a.repeats < 1 or a.warmup < 0:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    repeats = 3 if a.quick else a.repeats
    convs = [c for c in a.convs.split(",") if c]
    taus = [float(t) for t in a.taus.split(",") if t]
    if a.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = a.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        p.error("--devices cuda given but torch.cuda.is_available() is False")

    torch.set_num_threads(a.threads)
    # import glotpool + PyG (seconds) once, after the arguments are checked and before forking: children inherit it
    import glotpool.pooling  # noqa: F401
    import reference  # noqa: F401
    from glotpool.io_utils import atomic_write_json

    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores visible")
    results = []
    for device in devices:
        configs = [("mean", "-", 0.0)] + [(m, c, t) for c in convs for t in taus for m in ("dense", "per_sentence")]
        # 1. memory: CPU configurations in forked children (clean RSS high-water mark), before this process runs
        #    any torch op (forking after OpenMP work is unsafe); CUDA has resettable peak counters and must not fork
        rows = {}
        for method, conv, tau in configs:
            kw = dict(method=method, conv=conv, tau=tau, s=s, device=device, threads=a.threads)
            if device != "cpu":
                mem = measure_memory(**kw)
            elif a.no_isolate:
                mem = {"edges_per_token": None, "peak_fwd_mib": None, "peak_fwd_bwd_mib": None}
            else:
                mem = memory_isolated(**kw)
            rows[method, conv, tau] = {"method": method, "conv": conv, "tau": tau, "device": device,
                                       "threads": a.threads, **mem}
        # 2. time, dense and per-sentence interleaved per (conv, tau)
        tk = dict(s=s, device=device, threads=a.threads, repeats=repeats, warmup=a.warmup)
        rows["mean", "-", 0.0].update(measure_times(["mean"], "-", 0.0, **tk)["mean"])
        for conv in convs:
            for tau in taus:
                for method, t in measure_times(["dense", "per_sentence"], conv, tau, **tk).items():
                    rows[method, conv, tau].update(t)
                print(f"  timed {device} {conv} tau={tau}", flush=True)
        results += list(rows.values())
        print_table(results, s, device)
    if a.json:
        atomic_write_json(a.json, {"sizes": asdict(s), "threads": a.threads, "repeats": repeats,
                                   "torch": torch.__version__, "results": results})
    return results


if __name__ == "__main__":
    main()
