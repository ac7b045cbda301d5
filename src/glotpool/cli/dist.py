"""``glotpool dist cache|merge|train``: distributed caching and DDP training (launch with torchrun / accelerate).

    torchrun --nproc_per_node=4 --no-python glotpool dist cache --data train.csv --out caches/x
    torchrun --nproc_per_node=4 --no-python glotpool dist train --cache caches/x --data train.csv --pooler glot
    torchrun --nproc_per_node=4 -m glotpool dist ...        (the same, through ``python -m glotpool``)

Caching is :func:`glotpool.states.cache.build_cache_distributed`; training is
:func:`glotpool.training.ddp.train_pooler_ddp`. The data and training flags are the ones every training command
shares (:mod:`glotpool.cli._common`); see docs/distributed.md.
"""
from __future__ import annotations

import argparse
import sys

from glotpool.cli._common import (add_cache_args, add_task_args, add_train_args, backbone_state_kwargs, task_source,
                                  train_config)


def register(subparsers) -> None:
    from glotpool.training.trainer import TrainConfig

    p = subparsers.add_parser(
        "dist", help="distributed caching / DDP training (run under torchrun or accelerate launch)",
        description="Each rank encodes its shards of the global cache plan (rank 0 writes the index: the cache is "
                    "byte-identical to `glotpool cache`), or trains a pooler with DistributedDataParallel on global "
                    "batches. Launch with torchrun --nproc_per_node=N --no-python glotpool dist ...")
    sub = p.add_subparsers(dest="dist_command", metavar="COMMAND", required=True)
    c = sub.add_parser("cache", help="every rank encodes its shards; rank 0 writes the index")
    add_cache_args(c)
    c.set_defaults(func=_in_group(run_cache), merge=False)
    m = sub.add_parser("merge", help="one process: index a distributed build that ran without a process group")
    add_cache_args(m)
    m.set_defaults(func=_in_group(run_cache), merge=True)
    t = sub.add_parser("train", help="DDP training of a pooler on a cache (global batch = --batch-size)")
    t.add_argument("--cache", required=True, help="cache folder holding every text of the splits")
    add_task_args(t)
    t.add_argument("--pooler", default="glot", help="pooler spec, e.g. glot:conv=gcn,tau=0.4")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-seed", type=int, default=0, help="seed of the train/dev/test split")
    t.add_argument("--out", default=None, help="run folder (rank 0 writes best/, results.json)")
    t.add_argument("--quiet", action="store_true")
    add_train_args(t, TrainConfig())
    t.set_defaults(func=_in_group(run_train))


def run_cache(args: argparse.Namespace) -> int:
    from glotpool.data import read_table
    from glotpool.states.backbone import load_backbone
    from glotpool.states.cache import build_cache_distributed, init_distributed, merge_cache, unique_texts

    rank, world, device = init_distributed()
    ds = read_table(args.data, text_col=args.text_col, text_col_2=args.text_col_2)
    # the same text list as `glotpool cache`, so the two caches are interchangeable
    texts = unique_texts(ds.texts, ds.texts2 if args.text_col_2 else None)
    backbone = load_backbone(args.backbone, layer=args.layer, max_length=args.max_length,
                             padding_side=args.padding_side, device=str(device), dtype=args.backbone_dtype,
                             **backbone_state_kwargs(args))
    cols = [args.text_col] + ([args.text_col_2] if args.text_col_2 else [])
    kw = dict(batch_size=args.batch_size, shard_tokens=args.shard_tokens, store_dtype=args.dtype,
              extra_meta={"data": str(args.data), "columns": cols, "rows": len(ds),
                          "texts": "unique texts of the columns, first-seen order"})
    if args.merge:
        cache = merge_cache(backbone, texts, args.out, show_progress=not args.quiet, **kw)
    else:
        cache = build_cache_distributed(backbone, texts, args.out, show_progress=not args.quiet and rank == 0,
                                        overwrite=args.overwrite, **kw)
    if rank == 0 and cache is not None:
        print(f"cached {len(cache)} texts ({int(cache.lengths.sum())} tokens) on {world} rank(s) -> {args.out}",
              file=sys.stderr)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from glotpool.experiments.runs import PoolerSpec, build_model
    from glotpool.states.cache import init_distributed, open_cache
    from glotpool.training.ddp import train_pooler_ddp
    from glotpool.training.trainer import prepare_splits, seed_everything

    spec = PoolerSpec.parse(args.pooler)  # a bad spec fails before any rank opens the cache
    rank, world, device = init_distributed()
    task = task_source(args).load()
    cache = open_cache(args.cache, verify=rank == 0)
    data = prepare_splits(cache, task.splits, task.task_type, label_names=task.label_names,
                          score_range=task.score_range)
    cfg = replace(train_config(args), seed=args.seed, device=str(device), show_progress=not args.quiet)
    seed_everything(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    pooler, head = build_model(spec.resolved(cache, data["train"].idx1), cache.dim, data, cache=cache)
    result = train_pooler_ddp(pooler, head, cache, data, cfg, out_dir=args.out, states=spec.states)
    if rank == 0:
        print(f"{spec.label} on {world} rank(s): best epoch {result.best_epoch}, dev {result.dev}, "
              f"test {result.test}", file=sys.stderr)
    return 0


def _in_group(fn):
    """Run a command, then leave the process group it initialised (clean exit under torchrun)."""
    def run(args: argparse.Namespace) -> int:
        import torch.distributed as dist

        try:
            return fn(args)
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return run
