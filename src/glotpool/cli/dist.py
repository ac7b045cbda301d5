"""``glotpool dist cache|merge|train``: distributed caching and DDP training (launch with torchrun / accelerate).

    torchrun --nproc_per_node=4 --no-python glotpool dist cache --data train.csv --out caches/x

Same as ``python -m glotpool.distributed ...``; see docs/distributed.md.
"""
from __future__ import annotations


def register(subparsers) -> None:
    from ..distributed import build_parser

    p = subparsers.add_parser(
        "dist", help="distributed caching / DDP training (run under torchrun or accelerate launch)",
        description="Each rank encodes its shards of the global cache plan (rank 0 writes the index: the cache is "
                    "byte-identical to `glotpool cache`), or trains a pooler with DistributedDataParallel on global "
                    "batches. Launch with torchrun --nproc_per_node=N --no-python glotpool dist ...")
    build_parser(p)
