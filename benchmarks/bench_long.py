"""Long documents: peak memory and time of GLOT pooling vs length L, dense ``[B, L, L]`` path vs sparse path.

    python benchmarks/bench_long.py                      # B=1 D=384 knn k=16 GAT F=256 K=2, L = 128 ... 8192
    python benchmarks/bench_long.py --mem-cap-gb 3 --json long.json
    python benchmarks/bench_long.py --quick              # tiny sizes, seconds (smoke test)

Paths
-----
``dense``   :class:`glotpool.GLOTPooling` with ``sparse=False``: graph ``A [B, L, L]`` + PyG dense convs.
``sparse``  the same module (same weights) with ``sparse=True``: chunked neighbour search (``chunk_size`` query rows
            against all keys, O(chunk·L)) → batched ``edge_index`` → message passing (:mod:`glotpool.pooling.sparse`).

Measurements
------------
* peak memory: every (path, L) runs in a forked child (this process imports torch + glotpool once and runs no torch
  op itself). The child builds the pooler and the input, warms up on a 16-token input, then resets its RSS
  high-water mark (``echo 5 > /proc/self/clear_refs``, which ``getrusage().ru_maxrss`` follows) and reports
  ``high-water − RSS before the call``: the extra resident memory of one call, allocator slack included.
  ``fwd`` runs under ``torch.no_grad``; ``fwd+bwd`` is ``z.pow(2).sum().backward()`` w.r.t. the parameters, measured
  after a fresh reset (dense only for ``L <= --bwd-max-len``, sparse for ``L <= --sparse-bwd-max-len``).
  Without ``clear_refs`` (non-Linux) the child falls back to ``ru_maxrss`` deltas, which can under-report when an
  earlier peak was higher.
* time: median of ``--repeats`` calls after the measured (first) call.
* dense is skipped where its memory would exceed ``--mem-cap-gb``; the table says ``skipped (would need X GB)``.
  The estimate is the larger of ``peak(L_prev) · (L / L_prev)²`` (the previous measured length) and a floor of
  three fp32 ``[B, L, L]`` tensors (similarities, masked copy, attention logits live together).
* growth exponent: least-squares slope of log(peak) (and log(time)) vs log(L) over ``L >= --slope-min-len`` (short
  lengths are dominated by fixed costs). Linear memory has slope ~1, the dense path's L² terms slope ~2.

Findings (CPU, 1 thread, defaults: B=1 D=384 knn k=16 GAT F=256 K=2 chunk 1024; 2026-11, shared 2-core machine)
----------------------------------------------------------------------------------------------------------------
    L      dense fwd   sparse fwd    dense fwd   sparse fwd   dense f+b  sparse f+b   edges/token
    1024    32 MiB       42 MiB        65 ms        65 ms       36 MiB     93 MiB        27.0
    2048   108 MiB       99 MiB       228 ms       159 ms      180 MiB    147 MiB        28.4
    4096   329 MiB      125 MiB      1.2 s        0.42 s          -       220 MiB        29.3
    8192   1.1 GiB      142 MiB      5.2 s        1.4 s           -       339 MiB        29.7
Log-log slopes over L >= 512: dense memory 1.7 (fwd) / 1.8 (fwd+bwd), time 2.0; sparse memory ~0.6 (fixed costs
still dominate; its per-token terms are linear), fwd time 1.3 (the neighbour search is O(L²·D) compute, chunked).
Below L ~ 1-2k the dense path is as small and as fast (its L² terms are still small); hence ``sparse="auto"``
with ``sparse_min_length=1024``.

Inputs: ``h_i = a_i·s + b_i·t_{c(i)} + ε_i`` (``a, b ~ U(0, 2)``; shared direction ``s``, 8 topics ``t_c``,
noise ``ε``; all ``N(0, I_D)``), one sentence of exactly L tokens (B=1 by default).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
from _common import fwd, fwd_bwd, run_forked


@dataclass
class Setup:
    batch: int = 1
    dim: int = 384
    k: int = 16
    conv: str = "gat"
    hidden: int = 256
    layers: int = 2
    chunk_size: int = 1024
    topics: int = 8
    seed: int = 0
    threads: int = 1


# ----------------------------------------------------------------------------------------------------------------
# child: one (path, L)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_inputs(s: Setup, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(s.seed + length)
    B, D = s.batch, s.dim
    shared = torch.randn(B, 1, D, generator=g)
    topics = torch.randn(B, s.topics, D, generator=g)
    which = torch.randint(0, s.topics, (B, length), generator=g)
    a, b = (2 * torch.rand(B, length, 1, generator=g) for _ in range(2))
    h = a * shared + b * torch.gather(topics, 1, which.unsqueeze(-1).expand(B, length, D))
    h = h + torch.randn(B, length, D, generator=g)
    return h, torch.ones(B, length, dtype=torch.long)


def _build(path: str, s: Setup):
    from glotpool import GLOTPooling

    torch.manual_seed(s.seed)
    return GLOTPooling(s.dim, hidden_dim=s.hidden, num_layers=s.layers, conv=s.conv, graph="knn", k=s.k,
                       sparse=path == "sparse", chunk_size=s.chunk_size)


def measure(path: str, length: int, s: Setup, backward: bool, repeats: int) -> dict:
    torch.set_num_threads(s.threads)
    pool = _build(path, s)
    h, mask = make_inputs(s, length)
    small_h, small_mask = make_inputs(s, 16)
    fwd(pool, small_h, small_mask)  # first-call costs (kernels, thread pools) are not the length's
    fwd_bwd(pool, small_h, small_mask)

    def peak(fn) -> float:
        exact = _reset_peak()
        base = _rss_kib()
        fn(pool, h, mask)
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, hwm - base) / 1024 if exact or hwm > base else 0.0

    out = {"path": path, "L": length, "peak_fwd_mib": peak(fwd), "peak_fwd_bwd_mib": None,
           "fwd_ms": None, "fwd_bwd_ms": None, "edges_per_token": None}
    if backward:
        out["peak_fwd_bwd_mib"] = peak(fwd_bwd)
    for key, fn, on in (("fwd_ms", fwd, True), ("fwd_bwd_ms", fwd_bwd, backward)):
        if on:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(pool, h, mask)
                times.append((time.perf_counter() - t0) * 1e3)
            out[key] = statistics.median(times)
    if path == "sparse":  # the dense path builds the identical graph; counting it there would cost L² memory
        out["edges_per_token"] = float(pool.edges_per_token(h, mask).mean())
    return out


def isolated(**kwargs) -> dict:
    status, payload, code = run_forked(measure, **kwargs)
    if status != "ok":
        return {"path": kwargs["path"], "L": kwargs["length"], "error": f"{payload} (exit code {code})"}
    return payload


# ----------------------------------------------------------------------------------------------------------------
# report


def slope(points: list[tuple[int, float]], min_len: int) -> float | None:
    """Least-squares slope of log(y) vs log(L) over points with L >= min_len (None with fewer than 2)."""
    pts = [(math.log(L), math.log(y)) for L, y in points if L >= min_len and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / var if var else None


def _cell(row: dict | None, key: str, spec: str) -> str:
    if row is None:
        return "-"
    if "skipped" in row:
        return row["skipped"] if key.startswith("peak") else "-"
    if "error" in row:
        return "error"
    v = row.get(key)
    return "-" if v is None else format(v, spec)


def print_table(rows: dict, lengths: list[int], slope_min: int) -> None:
    cols = [("dense fwd MiB", "dense", "peak_fwd_mib", ".1f"), ("sparse fwd MiB", "sparse", "peak_fwd_mib", ".1f"),
            ("dense fwd ms", "dense", "fwd_ms", ".1f"), ("sparse fwd ms", "sparse", "fwd_ms", ".1f"),
            ("dense f+b MiB", "dense", "peak_fwd_bwd_mib", ".1f"),
            ("sparse f+b MiB", "sparse", "peak_fwd_bwd_mib", ".1f"),
            ("dense f+b ms", "dense", "fwd_bwd_ms", ".1f"), ("sparse f+b ms", "sparse", "fwd_bwd_ms", ".1f"),
            ("edges/token", "sparse", "edges_per_token", ".1f")]
    table = [[str(L)] + [_cell(rows.get((p, L)), key, spec) for _, p, key, spec in cols] for L in lengths]
    header = ["L"] + [c[0] for c in cols]
    widths = [max(len(header[i]), *(len(r[i]) for r in table)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(header))
    for r in table:
        print(line(r))
    print(f"\ngrowth exponent (log-log slope over L >= {slope_min}; 1 = linear, 2 = quadratic):")
    for path in ("dense", "sparse"):
        parts = []
        for key in ("peak_fwd_mib", "fwd_ms", "peak_fwd_bwd_mib", "fwd_bwd_ms"):
            pts = [(L, rows[(path, L)].get(key)) for L in lengths if (path, L) in rows]
            b = slope(pts, slope_min)
            parts.append(f"{key}={'-' if b is None else format(b, '.2f')}")
        print(f"  {path:6s} " + "  ".join(parts))


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="128,256,512,1024,2048,4096,8192")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--conv", default="gat", choices=["gat", "gcn", "gin", "gatv2"])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bwd-max-len", type=int, default=2048, help="dense fwd+bwd only up to this length")
    p.add_argument("--sparse-bwd-max-len", type=int, default=8192, help="sparse fwd+bwd only up to this length")
    p.add_argument("--mem-cap-gb", type=float, default=6.0, help="skip dense where it would need more")
    p.add_argument("--slope-min-len", type=int, default=512)
    p.add_argument("--paths", default="dense,sparse")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    a = p.parse_args(argv)
    if a.quick:
        a.lengths, a.dim, a.hidden, a.k, a.repeats, a.slope_min_len = "64,128,256", 32, 16, 4, 1, 1
        a.bwd_max_len = a.sparse_bwd_max_len = 128
        a.chunk_size = 48  # several row chunks per sentence even at these lengths
    try:
        lengths = sorted({int(x) for x in a.lengths.split(",") if x})
    except ValueError:
        p.error(f"--lengths must be comma-separated ints, got {a.lengths!r}")
    paths = [x for x in a.paths.split(",") if x]
    if not lengths or min(lengths) < 1 or set(paths) - {"dense", "sparse"} or not paths:
        p.error("--lengths must be positive ints and --paths a subset of dense,sparse")
    for name in ("batch", "dim", "k", "hidden", "chunk_size", "threads", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    s = Setup(batch=a.batch, dim=a.dim, k=a.k, conv=a.conv, hidden=a.hidden, layers=a.layers,
              chunk_size=a.chunk_size, threads=a.threads)

    import glotpool.pooling  # noqa: F401  (imported once here, before forking: children inherit it)
    from glotpool.io_utils import atomic_write_json

    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cores visible, {s.threads} thread(s)")
    print(f"B={s.batch} D={s.dim} knn k={s.k} conv={s.conv} F={s.hidden} K={s.layers} chunk={s.chunk_size}, "
          f"fwd+bwd up to L={a.bwd_max_len} (dense) / {a.sparse_bwd_max_len} (sparse), "
          f"dense memory cap {a.mem_cap_gb:g} GB\n", flush=True)
    cap_mib = a.mem_cap_gb * 1024
    rows: dict[tuple[str, int], dict] = {}
    for path in paths:
        last = None  # (L, fwd MiB, fwd+bwd MiB) of the previous measured length
        for L in lengths:
            backward = L <= (a.bwd_max_len if path == "dense" else a.sparse_bwd_max_len)
            if path == "dense":
                need = 3 * 4 * s.batch * L * L / 2**20  # at least 3 fp32 [B, L, L] tensors live at once
                if last is not None:
                    grow = (L / last[0]) ** 2
                    need = max(need, last[1] * grow, (last[2] or 0) * grow if backward else 0)
                if need > cap_mib:
                    rows[path, L] = {"path": path, "L": L, "skipped": f"skipped (would need {need / 1024:.1f} GB)"}
                    print(f"  {path:6s} L={L:5d}  {rows[path, L]['skipped']}", flush=True)
                    continue
            t0 = time.perf_counter()
            r = isolated(path=path, length=L, s=s, backward=backward, repeats=a.repeats)
            rows[path, L] = r
            if "error" in r:
                print(f"  {path:6s} L={L:5d}  ERROR {r['error']}", flush=True)
                continue
            last = (L, r["peak_fwd_mib"], r["peak_fwd_bwd_mib"])
            print(f"  {path:6s} L={L:5d}  fwd {r['peak_fwd_mib']:8.1f} MiB {r['fwd_ms']:9.1f} ms   "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print()
    print_table(rows, lengths, a.slope_min_len)
    result = {"setup": asdict(s), "lengths": lengths, "bwd_max_len": a.bwd_max_len,
              "sparse_bwd_max_len": a.sparse_bwd_max_len, "mem_cap_gb": a.mem_cap_gb,
              "torch": torch.__version__, "results": list(rows.values())}
    if a.json:
        atomic_write_json(a.json, result)
    if any("error" in r for r in rows.values()):
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
