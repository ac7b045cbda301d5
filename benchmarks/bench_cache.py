"""Hidden-state cache benchmark on the real MiniLM backbone (CPU, 1 torch thread for stable timings).

Measured side by side in one run:
1. size on disk: our ragged fp16 safetensors cache vs the paper code's padded fp32 ``torch.save`` of
   ``[N, Lmax, D]`` (+ mask);
2. caching overhead: ``build_cache`` wall time vs the backbone forwards alone on the same length-sorted,
   pre-tokenized batches (target <= 10 %);
3. read side: ``TokenCache.batch`` over a shuffled epoch vs a GLOT forward+backward on the same batches
   (falls back to mean pooling if ``glotpool.pooling`` is missing) -> is a training epoch I/O-bound?
4. what extra layers cost (``--layers``, issue #20): for 1 layer, 3 layers and every layer cached from one pass,
   bytes on disk, caching time, an epoch of reads and a GLOT training epoch (``layer_mix=K``), each as a ratio
   to the one-layer cache. The one-layer cache is the plain cache of 1-3 (same code path, same speed).

    python benchmarks/bench_cache.py [--n 512] [--batch-size 32] [--repeats 3] [--threads 1] [--no-layers]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from glotpool.states.backbone import length_sorted_batches, load_backbone, token_lengths  # noqa: E402
from glotpool.states.cache import build_cache  # noqa: E402

WORDS = ("the a this that film movie story plot actor actress director scene music score camera script "
         "is was feels seems looks remains becomes never always often rarely quite very truly almost too "
         "good bad great boring funny sad dark bright clever dull slow fast long short charming awkward "
         "moving tender brutal honest silly and but or yet so because while although when if , , , . ; "
         "with without about into over under between through after before during its their his her our "
         "character performance ending beginning dialogue humor tension pacing cast crew audience critics "
         "love hate enjoy admire forget remember watch see hear understand explain deliver earn lose").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Varied-length pseudo sentences (4-60 words, skewed short like review sentences), deterministic."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(min(60, 4 + int(rng.expovariate(1 / 14))))) + " ."
            for _ in range(n)]


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def time_raw_forward(bb, texts, plan) -> float:
    """Backbone forwards only: batches are tokenized and padded before the clock starts."""
    enc = bb.tokenize(texts, padding=False, return_tensors=None)
    padded = [bb.tokenizer.pad([{k: enc[k][i] for k in enc.keys()} for i in b], return_tensors="pt")
              for b in plan]
    t = time.perf_counter()
    for batch in padded:
        bb.forward_batch(batch)
    return time.perf_counter() - t


def time_build(bb, texts, batch_size, root: Path) -> tuple[float, float, Path]:
    """-> (build_cache wall time, time spent inside its backbone forwards, cache folder)."""
    out = root / "cache"
    shutil.rmtree(out, ignore_errors=True)
    inner = [0.0]
    real = bb.forward_batch

    def timed(batch):
        t0 = time.perf_counter()
        res = real(batch)
        inner[0] += time.perf_counter() - t0
        return res
    bb.forward_batch = timed
    try:
        t = time.perf_counter()
        build_cache(bb, texts, out, batch_size=batch_size, show_progress=False)
        return time.perf_counter() - t, inner[0], out
    finally:
        del bb.forward_batch  # back to the class method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timings are the min over repeats")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-layers", action="store_true", help="skip section 4 (multi-layer caches)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    bb = load_backbone("minilm")
    texts = make_texts(args.n)
    lengths = token_lengths(bb, texts)
    plan = length_sorted_batches(lengths, args.batch_size)
    n_tok = sum(lengths)
    print(f"MiniLM (D={bb.dim}), {args.n} sentences, {n_tok} tokens (mean {n_tok / args.n:.1f}, "
          f"max {max(lengths)}), batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"min of {args.repeats} runs")

    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        bb.encode(texts[:4])  # warm-up
        raw, built, extra = [], [], []
        for _ in range(args.repeats):  # interleaved, so machine load drifts hit both alike
            raw.append(time_raw_forward(bb, texts, plan))
            t, fwd, cache_dir = time_build(bb, texts, args.batch_size, root)
            built.append(t)
            extra.append(t - fwd)  # everything build_cache does besides the forwards
        from glotpool.states.cache import open_cache
        cache = open_cache(cache_dir)

        # 1. bytes on disk
        ours = dir_bytes(cache_dir)
        h_all, m_all = cache.batch(range(len(cache)))  # [N, Lmax, D] fp32: the paper code's tensor
        torch.save({"hidden": h_all, "mask": m_all}, root / "padded.pt")
        padded = (root / "padded.pt").stat().st_size
        shard_bytes = sum(p.stat().st_size for p in cache_dir.glob("shard-*"))
        print("\n1. size on disk")
        print(f"   padded fp32 torch.save [{len(cache)}, {h_all.shape[1]}, {bb.dim}] : {padded / 1e6:9.2f} MB")
        print(f"   glotpool cache (ragged fp16)          : {ours / 1e6:9.2f} MB "
              f"(shards {shard_bytes / 1e6:.2f} MB + index/texts {(ours - shard_bytes) / 1e6:.2f} MB)")
        print(f"   ratio padded / ours                   : {padded / ours:9.2f} x")

        # 2. caching overhead
        r, b = min(raw), min(built)
        print("\n2. caching throughput (same length-sorted batches)")
        print(f"   backbone forwards only : {r:7.3f} s  {args.n / r:8.1f} ex/s")
        print(f"   build_cache end to end : {b:7.3f} s  {args.n / b:8.1f} ex/s  "
              f"(tokenize + forward + fp16 gather + write + sha256 + index)")
        print(f"   caching overhead       : {100 * (b / r - 1):+6.1f} %  (min build / min forwards; target <= 10 %)")
        print(f"   non-forward work inside build_cache: {min(extra):.3f} s = {100 * min(extra) / r:.1f} % of the "
              f"forwards (measured within each build: robust to machine-load drift)")

        # 3. read side vs pooler training step
        try:
            from glotpool.pooling import build_pooler
            pooler, pname = build_pooler("glot", in_dim=bb.dim), "GLOT"
            out_dim = pooler.out_dim
        except ImportError:
            pooler, pname, out_dim = None, "mean pooling", bb.dim
        head = torch.nn.Linear(out_dim, 2)
        perm = torch.randperm(len(cache)).tolist()
        epoch = [perm[s:s + args.batch_size] for s in range(0, len(perm), args.batch_size)]
        labels = torch.randint(0, 2, (len(cache),))
        read_t, train_t = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            batches = [cache.batch(idx) for idx in epoch]
            read_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            for idx, (h, m) in zip(epoch, batches):
                z = pooler(h, m) if pooler is not None else (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
                loss = torch.nn.functional.cross_entropy(head(z), labels[idx])
                loss.backward()
            train_t.append(time.perf_counter() - t)
        rd, tr = min(read_t), min(train_t)
        print(f"\n3. shuffled epoch of {len(epoch)} batches (page cache warm)")
        print(f"   {'TokenCache.batch reads':<24}: {rd:7.3f} s  {len(cache) / rd:9.0f} ex/s  "
              f"({1e3 * rd / len(epoch):.2f} ms/batch)")
        print(f"   {pname + ' fwd+bwd':<24}: {tr:7.3f} s  {len(cache) / tr:9.0f} ex/s  "
              f"({1e3 * tr / len(epoch):.2f} ms/batch)")
        print(f"   reading = {100 * rd / (rd + tr):.1f} % of an epoch -> "
              f"{'I/O-bound' if rd > tr else 'compute-bound (reading is not the bottleneck)'}")
        print(f"   vs running the backbone each epoch: {r:.3f} s forwards = {r / tr:.1f}x the pooler step")
        if not args.no_layers:
            layer_costs(texts, args, root, epoch, labels)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def layer_costs(texts, args, root: Path, epoch, labels) -> None:
    """Section 4: one-layer vs 3-layer vs all-layer caches of the same texts, measured side by side."""
    from glotpool.pooling import build_pooler
    from glotpool.states.cache import open_cache

    one = load_backbone("minilm")
    sets = {"1 (last)": None, "3 (-1,-3,-5)": (-1, -3, -5), f"all ({one.num_layers + 1})": "all"}
    rows = {}
    for name, layers in sets.items():
        bb = one if layers is None else load_backbone("minilm", layers=layers)
        k = len(bb.layers)
        out = root / f"layers-{k}"
        build_t = []
        for _ in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            build_cache(bb, texts, out, batch_size=args.batch_size, show_progress=False)
            build_t.append(time.perf_counter() - t)
        cache = open_cache(out)
        torch.manual_seed(0)
        pooler = build_pooler("glot", in_dim=bb.dim, layer_mix=k)
        head = torch.nn.Linear(pooler.out_dim, 2)
        read_t, step_t = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            batches = [cache.batch(idx) for idx in epoch]  # every held layer: [B, L, K, D] when K > 1
            read_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            for idx, (h, m) in zip(epoch, batches):
                torch.nn.functional.cross_entropy(head(pooler(h, m)), labels[idx]).backward()
            step_t.append(time.perf_counter() - t)
        rows[name] = (k, dir_bytes(out), min(build_t), min(read_t), min(step_t))
    base = next(iter(rows.values()))
    print(f"\n4. extra layers (MiniLM, {len(texts)} sentences; GLOT with a learned layer mix of the K cached layers)")
    print(f"   {'layers cached':<14} {'K':>3} {'disk MB':>9} {'x':>6} {'cache s':>8} {'x':>6} {'read s':>7} {'x':>6} "
          f"{'train s':>8} {'x':>6}")
    for name, (k, nbytes, b, rd, st) in rows.items():
        print(f"   {name:<14} {k:>3} {nbytes / 1e6:9.2f} {nbytes / base[1]:6.2f} {b:8.3f} {b / base[2]:6.2f} "
              f"{rd:7.3f} {rd / base[3]:6.2f} {st:8.3f} {st / base[4]:6.2f}")
    print("   (x = ratio to the one-layer cache; one backbone pass caches every layer, so caching time grows only "
          "by the extra fp16 copies and bytes written)")


if __name__ == "__main__":
    main()
