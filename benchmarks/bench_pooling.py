"""Speed and peak memory of GLOT pooling: glotpool fp32 / bf16 vs the per-sentence formulation (vs the paper's
reference head from a local snapshot, when given) vs mean pooling, and the analytic FLOP floor of this machine.

    python benchmarks/bench_pooling.py                  # B=32 L=128 D=768 K=2 F=256; gat, gcn, gin; tau 0.3, 0.6
    python benchmarks/bench_pooling.py --convs gat --threads 2 --json results.json
    python benchmarks/bench_pooling.py --reference-path ~/src/GLOT   # + the paper's code (never vendored)
    python benchmarks/bench_pooling.py --quick              # tiny sizes, seconds (smoke test)

Methods
-------
``dense``         :class:`glotpool.GLOTPooling` in fp32: one padded ``[B, L, L]`` graph per batch, dense layers,
                  every per-token linear on the real tokens only (packed).
``dense_bf16``    the same module under the trainer's bf16 autocast (fp32 master weights, fp32 softmaxes and
                  graph similarities). ``--bf16 auto`` (default) runs it only where bf16 is native
                  (:func:`glotpool.states.backbone.cpu_has_bf16`, or CUDA): emulated bf16 GEMMs are many times
                  slower than fp32 and say nothing about the method. ``--bf16 on`` forces it.
``per_sentence``  :class:`reference.PerSentenceGLOT`: a Python loop building one PyG ``edge_index`` graph
                  per sentence and running PyG's sparse layers (the formulation of the paper's code). Same weights.
                  Our offline stand-in for the paper's head.
``reference``     the paper's own code, only with ``--reference-path DIR`` (a local snapshot the user provides;
                  skipped with a note when absent). ``DIR/glotpool_bench_adapter.py`` must define
                  ``from_dense(pooler) -> module`` with ``module(h, mask) -> z``, building the paper's head with
                  the same sizes (and, if it can, the same weights) from a :class:`glotpool.GLOTPooling`.
``mean``          mean pooling (no parameters: forward only).

FLOP floor
----------
The analytic matmul FLOPs below divided by the measured peak of one ``torch.matmul`` at the readout's shape
(``[N_real, U] @ [U, R]``, the largest GEMM; fp32, and bf16 where it runs): the time the head would take if every
FLOP ran at GEMM peak. ``x floor`` = measured time / floor time.

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
* GFLOP/s of the dense path from an analytic count of its matmul FLOPs (per-token products count the real
  tokens only, since they are packed; N = real tokens, U = D + K·F, R = readout width)::

      graph      2·B·L²·D                              (cosine similarities; no gradient)
      layer k    2·N·d_in·F  (+ 2·N·F·F for GIN's 2nd linear)  +  2·B·L²·F (aggregation A·X, padded)
                 (+ 2·2·N·F for GAT's two attention logits)
      readout    2·N·U·R + 2·N·R + 2·B·L·U             (score MLP, weighted sum)
      backward   2 × (forward minus graph) − 2·N·D·F   (grads w.r.t. inputs and weights of every matmul, except
                                                       the input gradient of layer 1's linear: the states are frozen)

Threads: ``--threads`` (default 1) sets ``torch.set_num_threads``; 1 thread gives stable numbers on a shared machine.

Findings: see the README's "Speed and memory benchmarks" section (numbers measured side by side in one run).
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


def real_tokens(s: Sizes) -> int:
    return int(make_inputs(s)[1].sum())


def dense_flops(s: Sizes, conv: str) -> tuple[float, float]:
    """Analytic matmul FLOPs ``(fwd, fwd+bwd)`` of the dense GLOT path (see the module docstring)."""
    B, L, D, F, K = s.batch, s.max_len, s.dim, s.hidden, s.layers
    N = real_tokens(s)
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
    readout = 2 * N * U * R + 2 * N * R + 2 * B * L * U
    fwd = graph + layers + readout
    bwd = 2 * (layers + readout) - 2 * N * D * F
    return float(fwd), float(fwd + bwd)


# ----------------------------------------------------------------------------------------------------------------
# measurements


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class UnderAutocast(torch.nn.Module):
    """``pool`` whose forward runs under the trainer's autocast (what ``TrainConfig.precision="bf16"`` and the
    encoder's ``precision`` do); backward runs outside it, as in training."""

    def __init__(self, pool, precision: str = "bf16"):
        super().__init__()
        self.pool, self.precision = pool, precision

    def forward(self, h, mask):
        from glotpool.training.trainer import autocast

        with autocast(h.device, self.precision):
            return self.pool(h, mask)


REFERENCE_ADAPTER = "glotpool_bench_adapter"
_reference_path: list[str | None] = [None]


def reference_available(path: str | None) -> str | None:
    """None if the paper's snapshot at ``path`` can be benchmarked, else why not (printed; the row is skipped)."""
    if not path:
        return "no --reference-path given"
    if not (Path(path).expanduser() / f"{REFERENCE_ADAPTER}.py").is_file():
        return f"{path} has no {REFERENCE_ADAPTER}.py (see the module docstring)"
    return None


def _build(method: str, conv: str, tau: float, s: Sizes) -> torch.nn.Module:
    """The pooler of ``method``; every GLOT method is built from the same seed and holds the same weights."""
    from glotpool import build_pooler
    from reference import PerSentenceGLOT

    torch.manual_seed(s.seed)
    if method == "mean":
        return build_pooler("mean", in_dim=s.dim)
    dense = build_pooler("glot", in_dim=s.dim, hidden_dim=s.hidden, num_layers=s.layers, conv=conv, tau=tau)
    if method == "dense":
        return dense
    if method == "dense_bf16":
        return UnderAutocast(dense, "bf16")
    if method == "reference":
        import importlib

        sys.path.insert(0, str(Path(_reference_path[0]).expanduser()))
        return importlib.import_module(REFERENCE_ADAPTER).from_dense(dense)
    return PerSentenceGLOT.from_dense(dense)


def gemm_peak(s: Sizes, device: str, dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of one ``torch.matmul`` at the readout's shape ``[N_real, U] @ [U, R]`` (median of ``repeats``)."""
    U = s.dim + s.layers * s.hidden
    R = max(128, U // 2)
    N = real_tokens(s)
    a = torch.randn(N, U, device=device, dtype=dtype)
    b = torch.randn(U, R, device=device, dtype=dtype)
    a @ b
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return 2 * N * U * R / statistics.median(ts) / 1e9


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


def print_table(results: list[dict], s: Sizes, device: str, peaks: dict | None = None) -> None:
    rows = [r for r in results if r["device"] == device]
    print(f"\n== device={device}  threads={rows[0]['threads']}  B={s.batch} L={s.max_len} "
          f"(real {s.min_len}..{s.max_len}) D={s.dim} K={s.layers} F={s.hidden} ==")
    head = (f"{'conv':5} {'tau':>4} {'edges/tok':>9} {'method':13} {'fwd ms':>9} {'f+b ms':>9} {'peak fwd MiB':>12} "
            f"{'peak f+b MiB':>12} {'GFLOP/s fwd':>11} {'GFLOP/s f+b':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        gf = gfb = None
        if r["method"] in ("dense", "dense_bf16"):
            f, fb = dense_flops(s, r["conv"])
            gf, gfb = f / r["fwd_ms"] / 1e6, fb / r["fwd_bwd_ms"] / 1e6
        conv = "-" if r["method"] == "mean" else r["conv"]
        tau = "-" if r["method"] == "mean" else f"{r['tau']:.1f}"
        print(f"{conv:5} {tau:>4} {_fmt(r.get('edges_per_token')):>9} {r['method']:13} {_fmt(r['fwd_ms'], '.2f'):>9} "
              f"{_fmt(r['fwd_bwd_ms'], '.2f'):>9} {_fmt(r['peak_fwd_mib']):>12} {_fmt(r['peak_fwd_bwd_mib']):>12} "
              f"{_fmt(gf):>11} {_fmt(gfb):>11}")
    baselines = [b for b in ("reference", "per_sentence") if any(r["method"] == b for r in rows)]
    ours = [m for m in ("dense", "dense_bf16") if any(r["method"] == m for r in rows)]
    for base in baselines:
        print(f"\nspeed-up over {base} (same run, interleaved, same weights, same inputs):")
        for r in rows:
            if r["method"] not in ours:
                continue
            ref = next(x for x in rows if x["method"] == base and x["conv"] == r["conv"] and x["tau"] == r["tau"])
            print(f"  {r['method']:10} {r['conv']:5} tau={r['tau']:.1f}:  fwd {ref['fwd_ms'] / r['fwd_ms']:6.2f}x   "
                  f"fwd+bwd {ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:6.2f}x")
    for conv in sorted({r["conv"] for r in rows if r["method"] == "dense"}):
        f, fb = dense_flops(s, conv)
        print(f"  dense {conv} matmul FLOPs (analytic, packed per-token products): fwd {f / 1e9:.4g} GFLOP, "
              f"fwd+bwd {fb / 1e9:.4g} GFLOP")
    if peaks:
        print("\nFLOP floor (analytic FLOPs / peak GEMM GFLOP/s of one torch.matmul [N_real, U] @ [U, R]):")
        for name, peak in peaks.items():
            print(f"  peak {name}: {peak:.1f} GFLOP/s")
        for r in rows:
            peak = peaks.get("bf16" if r["method"] == "dense_bf16" else "fp32")
            if r["method"] not in ours or peak is None:
                continue
            f, fb = dense_flops(s, r["conv"])
            ff, ffb = f / peak / 1e6, fb / peak / 1e6
            print(f"  {r['method']:10} {r['conv']:5} tau={r['tau']:.1f}:  floor fwd {ff:7.2f} ms ({r['fwd_ms'] / ff:5.2f}x "
                  f"floor)   floor fwd+bwd {ffb:7.2f} ms ({r['fwd_bwd_ms'] / ffb:5.2f}x floor)")


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
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="the dense_bf16 rows: auto = only where bf16 is native (cpu_has_bf16 or CUDA)")
    p.add_argument("--reference-path", default=None,
                   help="local snapshot of the paper's code holding glotpool_bench_adapter.py (skipped when absent)")
    p.add_argument("--no-per-sentence", action="store_true", help="leave out the per-sentence stand-in")
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

    from glotpool.states.backbone import cpu_has_bf16

    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_has_bf16()}, "
          f"{os.cpu_count()} cores visible, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    why = reference_available(a.reference_path)
    _reference_path[0] = a.reference_path
    print("reference (paper's code): " + (f"skipped: {why}" if why else f"from {a.reference_path}"))
    results = []
    for device in devices:
        native = device.startswith("cuda") or cpu_has_bf16()
        bf16 = a.bf16 == "on" or (a.bf16 == "auto" and native)
        if a.bf16 == "auto" and not native:
            print(f"dense_bf16 on {device}: skipped (no native bf16; --bf16 on forces it)")
        methods = ["dense"] + (["dense_bf16"] if bf16 else []) + ([] if a.no_per_sentence else ["per_sentence"]) \
            + ([] if why else ["reference"])
        configs = [("mean", "-", 0.0)] + [(m, c, t) for c in convs for t in taus for m in methods]
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
                for method, t in measure_times(methods, conv, tau, **tk).items():
                    rows[method, conv, tau].update(t)
                print(f"  timed {device} {conv} tau={tau}", flush=True)
        results += list(rows.values())
        peaks = {"fp32": gemm_peak(s, device, torch.float32)}
        if bf16:
            peaks["bf16"] = gemm_peak(s, device, torch.bfloat16)
        elif device == "cpu":  # evidence for the skip: what an emulated bf16 GEMM runs at here
            print(f"  (emulated bf16 GEMM here: {gemm_peak(s, device, torch.bfloat16, repeats=1):.1f} GFLOP/s vs "
                  f"fp32 {peaks['fp32']:.1f})")
        for r in rows.values():
            r["gemm_peak_gflops"] = peaks
        print_table(results, s, device, peaks)
        print(f"load average after {device}: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if a.json:
        atomic_write_json(a.json, {"sizes": asdict(s), "threads": a.threads, "repeats": repeats,
                                   "torch": torch.__version__, "results": results})
    return results


if __name__ == "__main__":
    main()
