"""``glotpool sweep``: ablation grids of GLOT settings on one cache (tidy CSV/JSON, summary, figures)."""
from __future__ import annotations

import argparse

from glotpool.cli._common import (add_budget_args, add_cache_dir_arg, add_subsample_args, add_task_args, add_train_args,
                                  csv_list, task_source, train_config, train_grid)


def register(subparsers) -> None:
    from glotpool.experiments.sweep import SweepSettings

    d = SweepSettings()
    p = subparsers.add_parser("sweep", help="grid of GLOT settings (tau, conv, layers, ...) with seeds",
                              description="Example: glotpool sweep --task pang-lee --grid tau=0.0,0.2,0.4,0.6,0.8 "
                                          "conv=gat,gcn,gin layers=1,2,4 --train-grid lr=1e-3,1e-2. Every point is "
                                          "trained under compare's protocol (default: converged, lr x weight decay "
                                          "chosen on dev per point). --task stress:0.9 uses the stress data.")
    p.add_argument("--backbone", default="minilm")
    add_task_args(p)
    p.set_defaults(task=d.source.task)
    p.add_argument("--pooler", default=d.pooler, help="pooler the grid applies to (default glot)")
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                   help="the pooler options to sweep; aliases: layers=num_layers, hidden=hidden_dim")
    p.add_argument("--base", nargs="*", default=[], metavar="KEY=V", help="fixed pooler options")
    p.add_argument("--seeds", type=csv_list(int), default=d.seeds)
    add_subsample_args(p)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/dev/test split")
    add_budget_args(p, grid_flag="--train-grid")  # --budget, --train-grid: per point, as compare's --grid per pooler
    add_cache_dir_arg(p)
    p.add_argument("--out", default=None, help="default runs/sweep-<task>")
    p.add_argument("--quiet", action="store_true")
    add_train_args(p, d.train)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.experiments.sweep import SweepSettings, parse_grid, run_sweep

    base = {k: v[0] for k, v in parse_grid(args.base).items()} if args.base else {}
    stress = args.task is not None and args.task.startswith("stress")
    ratio = (float(args.task.split(":", 1)[1]) if ":" in args.task else 0.9) if stress else None
    if stress:
        args.task = None  # the stress data is generated, not loaded
    settings = SweepSettings(backbone=args.backbone, source=task_source(args), stress_ratio=ratio, pooler=args.pooler,
                             base_options=base, grid=parse_grid(args.grid), seeds=args.seeds, budget=args.budget,
                             train=train_config(args), train_grid=train_grid(args), cache_dir=args.cache_dir,
                             show_progress=not args.quiet)
    out = args.out or f"runs/sweep-{settings.task_name.replace(':', '-')}"
    run_sweep(settings, out)
    print(open(f"{out}/summary.md", encoding="utf-8").read())
    return 0
