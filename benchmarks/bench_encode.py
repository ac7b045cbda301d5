"""Inference cost of pooling next to the frozen backbone: is GLOT's overhead small at encode time?

    python benchmarks/bench_encode.py                         # MiniLM + SmolLM2, batch 32, 1 thread
    python benchmarks/bench_encode.py --backbones minilm --repeats 20 --json bench_encode.json
    python benchmarks/bench_encode.py --quick                 # MiniLM only, 2 repeats (smoke test)

What is timed (one batch, side by side in the same process, alternating, median of ``--repeats`` after warm-up):

``backbone``  ``Backbone.forward_batch`` on the already tokenized, padded batch: ``H [B, L, D]`` of the last layer.
``<pooler>``  ``pooler(H, mask)`` on those states: ``z [B, out_dim]`` (GLOT = default config: gat, threshold
              tau=0.6, hidden 256, K=2; mean and adapool for reference). Fresh, untrained weights: inference
              cost does not depend on the values learned.
``encode``    ``Encoder.encode`` of the same texts with GLOT end to end (tokenize + length-sorted batch + backbone +
              pooler + copy out), for reference.

Both under ``torch.inference_mode``. Overhead = pooler median / backbone median. The texts are real Pang & Lee
movie-review sentences (``tests/data/pang-lee/sentences.csv``), consecutive ones joined until each has 30-60
tokens under the backbone's tokenizer (about what the paper's benchmarks use). ``--threads`` (default 1) sets
``torch.set_num_threads``: one thread gives stable timings on a shared CPU. SmolLM2's first load converts its GGUF
once (~20 s) into ``$GLOTPOOL_HOME``.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ROOT / "tests" / "data" / "pang-lee" / "sentences.csv"


def realistic_texts(backbone, n: int, lo: int = 30, hi: int = 60) -> list[str]:
    """``n`` texts of ``lo``-``hi`` tokens: consecutive movie-review sentences joined until long enough."""
    with open(SENTENCES, encoding="utf-8", newline="") as f:
        sents = [r["text"].strip() for r in csv.DictReader(f)]
    count = lambda t: len(backbone.tokenizer(t)["input_ids"])  # noqa: E731  (special tokens included)
    texts, cur = [], ""
    for s in sents * 3:
        cur = f"{cur} {s}".strip()
        k = count(cur)
        if k >= lo:
            if k <= hi:
                texts.append(cur)
                if len(texts) == n:
                    return texts
            cur = ""
    raise ValueError(f"could only build {len(texts)} texts of {lo}-{hi} tokens from {SENTENCES}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench_backbone(name: str, batch: int, repeats: int, warmup: int, device: str) -> dict:
    from glotpool.states.backbone import load_backbone
    from glotpool.encoder import Encoder
    from glotpool.pooling import build_pooler

    t0 = time.perf_counter()
    bb = load_backbone(name, device=device)
    load_s = time.perf_counter() - t0
    texts = realistic_texts(bb, batch)
    tok = bb.tokenize(texts)
    lengths = tok["attention_mask"].sum(1)
    torch.manual_seed(0)
    poolers = {"glot": build_pooler("glot", in_dim=bb.dim), "mean": build_pooler("mean", in_dim=bb.dim),
               "adapool": build_pooler("adapool", in_dim=bb.dim)}
    for p in poolers.values():
        p.to(bb.device).eval()
    enc = Encoder(bb, poolers["glot"])
    with torch.inference_mode():
        h, mask = bb.forward_batch(tok)
        fns = {"backbone": lambda: bb.forward_batch(tok)}
        fns.update({k: (lambda p=p: p(h, mask)) for k, p in poolers.items()})
        fns["encode"] = lambda: enc._embed(texts, batch_size=batch)
        times = {k: [] for k in fns}
        for _ in range(repeats):  # alternate, so that machine load drifts hit every row alike
            for k, fn in fns.items():
                times[k] += timed(fn, bb.device, 1, warmup if not times[k] else 0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"what": k, "median_ms": med[k], "min_ms": min(times[k]),
             "pct_of_backbone": 100 * med[k] / med["backbone"]} for k in fns]
    return {"backbone": name, "hidden": bb.dim, "batch": batch, "tokens_min": int(lengths.min()),
            "tokens_mean": float(lengths.float().mean()), "tokens_max": int(lengths.max()),
            "padded_len": int(tok["input_ids"].shape[1]), "load_seconds": load_s, "device": str(bb.device),
            "glot_out_dim": poolers["glot"].out_dim, "glot_params": poolers["glot"].num_trainable_parameters(),
            "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default="minilm,smollm2", help="comma-separated presets / model folders")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = leave torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="MiniLM, batch 8, 2 repeats (smoke test)")
    a = ap.parse_args(argv)
    if a.quick:
        a.backbones, a.batch, a.repeats, a.warmup = "minilm", 8, 2, 1
    if a.batch < 1 or a.repeats < 1:
        ap.error("--batch and --repeats must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(f"# pooling overhead at inference: batch {a.batch}, median of {a.repeats} (alternating runs), "
          f"torch {env['torch']}, {env['threads']} thread(s), {env['gpu'] or 'CPU'}")
    results = []
    for name in [x.strip() for x in a.backbones.split(",") if x.strip()]:
        r = bench_backbone(name, a.batch, a.repeats, a.warmup, a.device)
        results.append(r)
        print(f"\n## {name} (hidden {r['hidden']}, {r['device']}): tokens/text {r['tokens_min']}-{r['tokens_max']} "
              f"(mean {r['tokens_mean']:.1f}, padded to {r['padded_len']}); GLOT out_dim {r['glot_out_dim']}, "
              f"{r['glot_params']:,} params; load {r['load_seconds']:.1f} s")
        print(f"{'what':10s} {'median ms':>10s} {'min ms':>9s} {'% of backbone':>14s}")
        for row in r["rows"]:
            print(f"{row['what']:10s} {row['median_ms']:10.2f} {row['min_ms']:9.2f} {row['pct_of_backbone']:13.2f}%")
        sys.stdout.flush()
    if a.json:
        from glotpool.io_utils import atomic_write_json

        atomic_write_json(a.json, {"environment": env, "args": vars(a), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
