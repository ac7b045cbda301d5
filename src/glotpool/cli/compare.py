"""``glotpool compare``: every pooler on one task with the same head, budget and seeds."""
from __future__ import annotations

import argparse

from ._common import add_task_args, add_train_args, csv_list, pooler_list, train_config


def register(subparsers) -> None:
    from ..compare import DEFAULT_POOLERS, CompareSettings

    d = CompareSettings()
    p = subparsers.add_parser("compare", help="train every pooler on a task and compare (table + bar chart)",
                              description="Cache the task's texts once, train each pooler (same head, budget, "
                                          "seeds) and write results.json, results.md and comparison.png.")
    p.add_argument("--backbone", default="minilm")
    add_task_args(p)
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<task>)")
    p.add_argument("--poolers", type=pooler_list, default=DEFAULT_POOLERS)
    p.add_argument("--seeds", type=csv_list(int), default=d.seeds)
    p.add_argument("--max-train", type=int, default=None, help="subsample train (seeded, stratified)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--quiet", action="store_true")
    add_train_args(p, d.train)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import CompareSettings, run_compare

    settings = CompareSettings(backbone=args.backbone, task=args.task, data_dir=args.data_dir,
                               train_file=args.train_file, dev_file=args.dev_file, test_file=args.test_file,
                               data_file=args.data_file, task_type=args.task_type, text_col=args.text_col,
                               text_col_2=args.text_col_2, label_col=args.label_col, score_col=args.score_col,
                               poolers=args.poolers, seeds=args.seeds, train=train_config(args),
                               max_train=args.max_train, max_length=args.max_length, layer=args.layer,
                               show_progress=not args.quiet)
    name = args.task or "local"
    out = args.out or f"runs/compare-{name}"
    run_compare(settings, out)
    print(open(f"{out}/results.md", encoding="utf-8").read())
    return 0
