"""``glotpool run``: the end-to-end main job (stress test + real-task comparison) with a markdown report."""
from __future__ import annotations

import argparse
import sys

from glotpool.cli._common import csv_list


def register(subparsers) -> None:
    from glotpool.experiments.pipeline import MainJobSettings

    d = MainJobSettings()
    p = subparsers.add_parser("run", help="end-to-end main job: stress test + Pang & Lee comparison, one report",
                              description="Stress test at four ratios (converged budget) and the Pang & Lee "
                                          "comparison on the embedded MiniLM model; writes OUT/report.md and "
                                          "figures. About 15 minutes on 2 CPU cores; resumable.")
    p.add_argument("--out", default="runs/main")
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--stress-seeds", type=csv_list(int), default=d.stress_seeds)
    p.add_argument("--compare-seeds", type=csv_list(int), default=d.compare_seeds)
    p.add_argument("--compare-task", default=d.compare_task, help="preset task, or 'none' to skip")
    p.add_argument("--data-dir", default=None, help="folder of fetched corpora (default $GLOTPOOL_DATA or ./data)")
    p.add_argument("--smoke", action="store_true",
                   help="the same wiring end to end at a tiny size (one ratio, one seed, 400 training sentences): "
                        "under 3 minutes; CI runs it from an empty data folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.experiments.pipeline import MainJobSettings, run_main_job

    task = None if str(args.compare_task).lower() == "none" else args.compare_task
    kw = dict(backbone=args.backbone, compare_task=task, data_dir=args.data_dir, show_progress=not args.quiet)
    if args.smoke:
        settings = MainJobSettings.smoke(**kw)
    else:
        settings = MainJobSettings(stress_seeds=args.stress_seeds, compare_seeds=args.compare_seeds, **kw)
    report = run_main_job(settings, args.out)
    print(report)
    print(f"report: {args.out}/report.md", file=sys.stderr)
    return 0
