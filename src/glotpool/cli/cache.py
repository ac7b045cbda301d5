"""``glotpool cache``: run a frozen backbone over a data file once and store its token states for training."""
from __future__ import annotations

import argparse
import sys

from glotpool.cli._common import add_cache_args, backbone_state_kwargs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache", help="store a frozen backbone's token states of a data file (resumable)",
        description="Run the backbone over the unique texts of one or two text columns and store their token "
                    "states (ragged safetensors shards + index.json). Rerunning with the same arguments reuses a "
                    "complete cache or resumes an interrupted one.")
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.states.backbone import load_backbone
    from glotpool.states.cache import build_cache, unique_texts
    from glotpool.data import read_table

    ds = read_table(args.data, text_col=args.text_col, text_col_2=args.text_col_2)
    cols = [args.text_col] + ([args.text_col_2] if args.text_col_2 else [])
    texts = unique_texts(ds.texts, ds.texts2 if args.text_col_2 else None)
    backbone = load_backbone(args.backbone, layer=args.layer, max_length=args.max_length,
                             padding_side=args.padding_side, device=args.device, dtype=args.backbone_dtype,
                             **backbone_state_kwargs(args))
    cache = build_cache(backbone, texts, args.out, batch_size=args.batch_size, shard_tokens=args.shard_tokens,
                        store_dtype=args.dtype, show_progress=not args.quiet, overwrite=args.overwrite,
                        extra_meta={"data": str(args.data), "columns": cols, "rows": len(ds),
                                    "texts": "unique texts of the columns, first-seen order"})
    print(f"cached {len(cache)} unique texts ({int(cache.lengths.sum())} tokens, dim {cache.dim}, "
          f"{cache.meta['store_dtype']}, {cache.size_str()}) from {len(ds)} rows of {args.data} -> {args.out}",
          file=sys.stderr)
    return 0
