"""``glotpool stress``: the diagnostic stress test (ratios × poolers × seeds × budgets) with table and figures."""
from __future__ import annotations

import argparse
import sys

from glotpool.cli._common import csv_list, pooler_list, train_grid


def register(subparsers) -> None:
    from glotpool.experiments.stress import DEFAULT_POOLERS, StressSettings

    d = StressSettings()
    p = subparsers.add_parser("stress", help="needle-among-distractors stress test on cached states",
                              description="Generate the seeded stress data at each distractor ratio, cache the "
                                          "backbone's states once, train every pooler with every seed under each "
                                          "budget, and write results.json, results.md and figures. Resumable.")
    p.add_argument("--backbone", default="minilm", help="preset (minilm, smollm2), hub id or model folder")
    p.add_argument("--out", default=None, help="output folder (default runs/stress-<backbone>)")
    p.add_argument("--ratios", type=csv_list(float), default=d.ratios, help="e.g. 0.2,0.5,0.8,0.9")
    p.add_argument("--poolers", type=pooler_list, default=DEFAULT_POOLERS,
                   help="space-separated pooler specs, e.g. 'mean adapool glot glot-knn=glot:graph=knn,k=8'")
    p.add_argument("--seeds", type=csv_list(int), default=d.seeds)
    p.add_argument("--budgets", type=csv_list(str), default=d.budgets, help="paper,converged")
    p.add_argument("--train-grid", nargs="*", default=None, metavar="KEY=V1,V2",
                   help="converged budget's dev grid per ratio and pooler, e.g. lr=1e-3,1e-2 weight_decay=0.01 "
                        "(default: compare's lr=0.0003,0.001,0.003,0.01 weight_decay=0,0.01)")
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-eval", type=int, default=d.n_eval)
    p.add_argument("--length", type=int, default=d.length, help="L, words per sentence the ratio refers to")
    p.add_argument("--negation-in-noise", action="store_true",
                   help="reproduce the published flaw: negation words among the distractors")
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--precision", default=d.precision, choices=["fp32", "bf16"], help="training precision")
    p.add_argument("--cache-dir", default=None, help="share the per-ratio caches between runs (default OUT/cache)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.experiments.stress import StressSettings, run_stress

    settings = StressSettings(backbone=args.backbone, ratios=args.ratios, poolers=args.poolers, seeds=args.seeds,
                              budgets=args.budgets, train_grid=train_grid(args), n_train=args.n_train,
                              n_eval=args.n_eval,
                              length=args.length, negation_in_noise=args.negation_in_noise,
                              max_length=args.max_length, precision=args.precision, cache_dir=args.cache_dir,
                              show_progress=not args.quiet)
    out = args.out or f"runs/stress-{args.backbone}"
    run_stress(settings, out)
    print(open(f"{out}/results.md", encoding="utf-8").read())
    print(f"wrote {out}/results.md, results.json and figures", file=sys.stderr)
    return 0
