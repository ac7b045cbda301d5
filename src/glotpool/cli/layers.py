"""``glotpool layers``: a cheap probe per hidden layer (mean pooling + a dev-tuned linear probe): where a task lives."""
from __future__ import annotations

import argparse

from glotpool.cli._common import add_prompt_arg, add_subsample_args, add_task_args, task_source


def register(subparsers) -> None:
    from glotpool.experiments.layers import LayerSettings

    d = LayerSettings()
    p = subparsers.add_parser("layers", help="dev score of a cheap probe per hidden layer (plot + best layer)",
                              description="One backbone pass over the train and dev texts (never test) with every "
                                          "hidden layer; per layer, mean pooling over the text's tokens + a linear "
                                          "probe with C chosen on dev (sts: the cosine of the pair). Writes "
                                          "results.json, results.md and layers.png, with GLOT's graph density per "
                                          "layer at its default tau.")
    p.add_argument("--backbone", default=d.backbone)
    add_task_args(p)
    add_prompt_arg(p, pools="the per-layer probe")
    add_subsample_args(p, test=False)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/dev/test split")
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="texts per backbone batch")
    p.add_argument("--graph-sample", type=int, default=d.graph_sample,
                   help="train texts whose GLOT graphs give the density per layer")
    p.add_argument("--out", default=None, help="output folder (default runs/layers-<task>)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.experiments.layers import LayerSettings, run_layers

    settings = LayerSettings(backbone=args.backbone, source=task_source(args), prompt=args.prompt,
                             max_length=args.max_length, batch_size=args.batch_size,
                             graph_sample=args.graph_sample, show_progress=not args.quiet)
    out = args.out or f"runs/layers-{args.task or 'local'}"
    run_layers(settings, out)
    print(open(f"{out}/results.md", encoding="utf-8").read())
    return 0
