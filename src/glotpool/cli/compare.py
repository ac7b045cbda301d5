"""``glotpool compare``: every pooler on one task with the same head, budget and seeds."""
from __future__ import annotations

import argparse

from glotpool.cli._common import (add_backbone_state_args, add_budget_args, add_cache_dir_arg, add_subsample_args,
                                  add_task_args, add_train_args, csv_list, pooler_list, task_source, train_config,
                                  train_grid)


def register(subparsers) -> None:
    from glotpool.experiments.compare import DEFAULT_POOLERS, CompareSettings

    d = CompareSettings()
    p = subparsers.add_parser("compare", help="train every pooler on a task and compare (table + bar chart)",
                              description="Cache the task's texts once, train each pooler (same head, budget, "
                                          "seeds) and write results.json, results.md and comparison.png.")
    p.add_argument("--backbone", default="minilm")
    add_task_args(p)
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<task>; with --suite: "
                                               "runs/<suite>-suite-<task>)")
    p.add_argument("--poolers", type=pooler_list, default=DEFAULT_POOLERS)
    p.add_argument("--seeds", type=csv_list(int), default=d.seeds)
    add_subsample_args(p)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--layer", type=int, default=-1)
    add_backbone_state_args(p)  # --prompt / --layers; poolers then pick layer= / mix= / tokens=
    g = p.add_argument_group("suites (instead of --poolers)")
    g.add_argument("--suite", choices=["decoder"], default=None,
                   help="decoder: mean / last / PromptEOL-last / echo-mean and adapool / pma / glot on the last "
                        "layer, the best dev layer and a learned layer mix, with and without echo; layer, prompt "
                        "and tokens chosen on dev (see glotpool.experiments.decoder_suite)")
    g.add_argument("--suite-rows", type=csv_list(), default=None, metavar="NAMES",
                   help="keep only these suite rows: names or glob patterns, comma-separated, e.g. "
                        "'mean,last,glot-*' (default: every row)")
    g.add_argument("--mix-size", type=int, default=d.mix_size,
                   help="layers of the suite's mix: this many evenly spaced, plus the best dev layer and the last")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/dev/test split")
    add_budget_args(p)  # --budget, --grid
    p.add_argument("--probe", choices=["sklearn"], default=None,
                   help="add a dev-tuned scikit-learn LogisticRegression row for each parameter-free pooler")
    add_cache_dir_arg(p)
    p.add_argument("--quiet", action="store_true")
    add_train_args(p, d.train)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.experiments.compare import DEFAULT_POOLERS, CompareSettings, run_compare

    if args.suite is None and (args.suite_rows is not None):
        raise ValueError("--suite-rows selects rows of a suite; give --suite decoder")
    if args.suite is not None and args.poolers is not DEFAULT_POOLERS:
        raise ValueError(f"--suite {args.suite} has its own rows; drop --poolers (shrink the suite with --suite-rows)")
    settings = CompareSettings(backbone=args.backbone, source=task_source(args), poolers=args.poolers,
                               seeds=args.seeds, train=train_config(args), budget=args.budget,
                               grid=train_grid(args), probe=args.probe,
                               max_length=args.max_length, layer=args.layer, prompt=args.prompt,
                               layers=args.layers, cache_dir=args.cache_dir, show_progress=not args.quiet,
                               suite=args.suite, suite_rows=args.suite_rows, mix_size=args.mix_size)
    name = args.task or "local"
    if args.suite is not None:
        from glotpool.experiments.decoder_suite import run_decoder_suite

        out = args.out or f"runs/{args.suite}-suite-{name}"
        run_decoder_suite(settings, out)
    else:
        out = args.out or f"runs/compare-{name}"
        run_compare(settings, out)
    print(open(f"{out}/results.md", encoding="utf-8").read())
    return 0
