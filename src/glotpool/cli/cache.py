"""``glotpool cache``: run a frozen backbone over a data file once and store its token states for training."""
from __future__ import annotations

import argparse
import sys

from ..cache import STORE_DTYPES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache", help="store a frozen backbone's token states of a data file (resumable)",
        description="Run the backbone over the unique texts of one or two text columns and store their token "
                    "states (ragged safetensors shards + index.json). Rerunning with the same arguments reuses a "
                    "complete cache or resumes an interrupted one.")
    p.add_argument("--backbone", default="minilm", help="preset (minilm, smollm2), hub id or model folder")
    p.add_argument("--data", required=True, help="CSV / TSV / JSONL file with a header")
    p.add_argument("--out", required=True, help="cache folder to create (or reuse / resume)")
    p.add_argument("--text-col", default="text", help="text column (default: text)")
    p.add_argument("--text-col-2", default=None, help="second text column of pair data (cached too)")
    p.add_argument("--layer", type=int, default=-1, help="hidden layer (0 = embeddings, -1 = last)")
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float16", choices=sorted(STORE_DTYPES), help="storage dtype")
    p.add_argument("--shard-tokens", type=int, default=1_000_000, help="tokens per shard file")
    p.add_argument("--padding-side", choices=["left", "right"], default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace a cache built with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def unique_texts(*columns: list[str] | None) -> list[str]:
    """Unique texts of the given columns, first-seen order (deterministic, so the cache key is stable)."""
    return list(dict.fromkeys(t for col in columns if col is not None for t in col))


def run(args: argparse.Namespace) -> int:
    from ..backbone import load_backbone
    from ..cache import build_cache
    from ..data import read_table

    ds = read_table(args.data, text_col=args.text_col, text_col_2=args.text_col_2)
    cols = [args.text_col] + ([args.text_col_2] if args.text_col_2 else [])
    texts = unique_texts(ds.texts, ds.texts2 if args.text_col_2 else None)
    backbone = load_backbone(args.backbone, layer=args.layer, max_length=args.max_length,
                             padding_side=args.padding_side, device=args.device)
    cache = build_cache(backbone, texts, args.out, batch_size=args.batch_size, shard_tokens=args.shard_tokens,
                        store_dtype=args.dtype, show_progress=not args.quiet, overwrite=args.overwrite,
                        extra_meta={"data": str(args.data), "columns": cols, "rows": len(ds),
                                    "texts": "unique texts of the columns, first-seen order"})
    print(f"cached {len(cache)} unique texts ({int(cache.lengths.sum())} tokens, dim {cache.dim}, "
          f"{cache.meta['store_dtype']}) from {len(ds)} rows of {args.data} -> {args.out}", file=sys.stderr)
    return 0
