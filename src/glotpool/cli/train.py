"""``glotpool train``: train ONE pooler (+ head) on a task and save it as an Encoder for ``encode`` / ``predict``.

    OUT/cache   the backbone's token states of every split's texts (reused on a rerun)
    OUT/run     experiments.runs.run_one's run.json, results.{json,md} and best/ (resumable: a rerun reuses it)
    OUT/model   Encoder.save_pretrained: what `glotpool encode --model` / `glotpool predict --model` load
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from glotpool.cli._common import (add_backbone_state_args, add_cache_dir_arg, add_subsample_args, add_task_args,
                                  add_tokens_arg, add_train_args, backbone_state_kwargs, task_source, train_config,
                                  train_states)


def register(subparsers) -> None:
    from glotpool.experiments.budgets import CONVERGED

    p = subparsers.add_parser("train", help="train one pooler on a task and save a model for encode / predict",
                              description="Cache the task's texts with the frozen backbone, train the pooler and "
                                          "task head (best dev epoch kept), save OUT/model and print the metrics.")
    p.add_argument("--backbone", default="minilm", help="preset (minilm, smollm2), hub id or model folder")
    add_task_args(p)
    p.add_argument("--pooler", default="glot", help="pooler spec, e.g. glot, glot:conv=gcn,tau=0.4, adapool, mean")
    p.add_argument("--out", required=True, help="output folder (cache/, run/, model/)")
    p.add_argument("--seed", type=int, default=0, help="pooler init and batch order")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/dev/test split")
    add_subsample_args(p)
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens")
    p.add_argument("--layer", type=int, default=-1, help="hidden layer (0 = embeddings, -1 = last)")
    add_backbone_state_args(p)
    add_tokens_arg(p)
    add_cache_dir_arg(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an OUT/cache built with other settings and a non-empty OUT/model that is not a "
                        "glotpool model folder")
    p.add_argument("--quiet", action="store_true")
    add_train_args(p, CONVERGED)  # cosine decay, up to 60 epochs, early stopping on dev
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.encoder import Encoder
    from glotpool.experiments.runs import PoolerSpec, run_one
    from glotpool.experiments.scaffold import adapt_spec, prepare_experiment
    from glotpool.io_utils import refuse_foreign_dir
    from glotpool.states.backbone import load_backbone

    out = Path(args.out)
    spec = PoolerSpec.parse(args.pooler)  # a bad spec fails before the backbone loads
    refuse_foreign_dir(out, None, overwrite=True)  # --out must be creatable (not a file, parent writable)
    refuse_foreign_dir(out / "model", "encoder.json", args.overwrite, "glotpool model folder")
    task = task_source(args).load()
    backbone = load_backbone(args.backbone, max_length=args.max_length, layer=args.layer,
                             **backbone_state_kwargs(args))
    spec = adapt_spec(train_states(spec, backbone, args.tokens), backbone, announce=True)
    exp = prepare_experiment(backbone, task, args.cache_dir or out / "cache", show_progress=not args.quiet,
                             overwrite=args.overwrite)
    cfg = replace(train_config(args), show_progress=not args.quiet)
    rec = run_one(spec, exp.cache, exp.data, cfg, seed=args.seed, run_dir=out / "run", save_model=True)
    encoder = Encoder.from_run(out / "run", backbone, **spec.states.batch_kwargs())
    from glotpool.model_card import dataset_ids

    encoder.training.update(task=task.name, task_type=task.task_type, datasets=dataset_ids(task.name),
                            splits={k: len(v) for k, v in task.splits.items()})
    encoder.save_pretrained(out / "model", overwrite=args.overwrite)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in task.splits.items())
    print(f"# {task.name} ({task.task_type}), pooler {spec.label}, frozen {args.backbone}: best epoch "
          f"{rec.best_epoch}, {rec.trainable_parameters:,} trainable parameters; {sizes}")
    for split, m in (("dev", rec.dev), ("test", rec.test)):
        if m:
            print(f"{split:5s}" + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    if rec.extra.get("layer_mix"):
        mix = rec.extra["layer_mix"]
        print("layer mix: " + ", ".join(f"layer {la} {w:.3f}" for la, w in zip(mix["layers"], mix["weights"]))
              + f"; gamma {mix['gamma']:.3f}")
    print(f"model: {out / 'model'}  (glotpool encode --model {out / 'model'} --input FILE --out emb.npy)",
          file=sys.stderr)
    return 0

