"""``glotpool embed-train``: a general-purpose sentence embedding model from a frozen LM in one command.

    glotpool embed-train --backbone smollm2 --pooler glot --out models/smollm2-glot-nli --max-train 4000
    glotpool evaluate --model models/smollm2-glot-nli
    glotpool embed-train --backbone smollm2 --prompt echo --layers all --tokens text --grid lr=3e-4,1e-3,3e-3 ...

The NLI recipe: the ``nli-pairs`` preset (SNLI (premise, entailed hypothesis) pairs with the contradiction of the
same premise as hard negative; fetched and built on first use), the backbone's token states cached once, the pooler
trained with in-batch + hard-negative InfoNCE (``retrieval`` head) in batches that never hold two triplets of one
premise, model selection on dev MRR@10. Writes::

    OUT/cache     token states of every text (reused on a rerun)
    OUT/run       run.json, results.{json,md}, best/ (resumable); with --grid: OUT/runs/<point>/seed-N, one
                  per grid point, the model taken from the point with the best dev MRR@10
    OUT/model     the Encoder folder (+ README.md model card): glotpool encode / evaluate --model OUT/model
    OUT/st        sentence-transformers export (+ model card), unless --no-st
    OUT/recipe.json  sizes, settings and wall times (caching, training, total)
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from glotpool.training.trainer import TrainConfig

# contrastive training on cached states: a few epochs suffice; cosine decay with warm-up, early stopping on dev
EMBED_DEFAULTS = TrainConfig(epochs=10, lr=1e-3, batch_size=64, weight_decay=0.01, patience=3, schedule="cosine",
                             warmup=0.05)


def register(subparsers) -> None:
    from glotpool.cli._common import add_backbone_state_args, add_cache_dir_arg, add_tokens_arg, add_train_args

    p = subparsers.add_parser("embed-train", help="train a general-purpose embedding model (NLI recipe) and export it",
                              description="Fetch SNLI, build nli-pairs triplets, cache the frozen backbone's states, "
                                          "train the pooler contrastively (in-batch + hard negatives), save an "
                                          "Encoder folder with a model card and a sentence-transformers export.")
    p.add_argument("--backbone", default="minilm", help="preset (minilm, smollm2), hub id or model folder")
    p.add_argument("--pooler", default="glot", help="pooler spec, e.g. glot, adapool, pma, mean_linear")
    p.add_argument("--out", required=True, help="output folder (cache/, run/, model/, st/, recipe.json)")
    p.add_argument("--data-dir", default=None, help="folder of fetched corpora (default $GLOTPOOL_DATA or ./data)")
    p.add_argument("--max-train", type=int, default=None, help="training triplets (seeded subsample; default all)")
    p.add_argument("--max-dev", type=int, default=1000, help="dev triplets (seeded subsample)")
    p.add_argument("--max-test", type=int, default=1000, help="test triplets (seeded subsample; 0 = no test split)")
    p.add_argument("--no-hard-negatives", action="store_true", help="in-batch negatives only")
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (initial, if learned)")
    p.add_argument("--learn-temperature", action="store_true", help="learn the temperature")
    p.add_argument("--seed", type=int, default=0, help="pooler init and batch order")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the subsamples")
    p.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens")
    p.add_argument("--layer", type=int, default=-1, help="hidden layer (0 = embeddings, -1 = last)")
    add_backbone_state_args(p)
    add_tokens_arg(p)
    p.add_argument("--grid", nargs="*", default=None, metavar="KEY=V1,V2",
                   help="pick the training settings on dev MRR@10 from this grid (e.g. lr=3e-4,1e-3,3e-3 "
                        "weight_decay=0,0.01): every point is trained with --seed, the best one is exported")
    p.add_argument("--no-st", action="store_true", help="skip the sentence-transformers export")
    add_cache_dir_arg(p)
    p.add_argument("--shard-tokens", type=int, default=50_000,
                   help="tokens per cache shard: an interrupted caching run resumes at the last finished shard")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/cache or OUT/model built with other settings")
    p.add_argument("--quiet", action="store_true")
    add_train_args(p, EMBED_DEFAULTS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.cli._common import backbone_state_kwargs, train_config, train_states
    from glotpool.data import TaskSource
    from glotpool.data.fetch import default_data_dir, fetch_corpora
    from glotpool.data.splits import subsample
    from glotpool.encoder import Encoder
    from glotpool.experiments.budgets import point_name, tune_and_run
    from glotpool.experiments.runs import PoolerSpec, run_one
    from glotpool.experiments.scaffold import adapt_spec, prepare_experiment
    from glotpool.experiments.sweep import parse_grid
    from glotpool.io_utils import atomic_write_json, refuse_foreign_dir
    from glotpool.states.backbone import load_backbone

    t_start = time.perf_counter()
    out = Path(args.out)
    spec = PoolerSpec.parse(args.pooler)  # a bad spec or grid fails before anything is fetched or loaded
    grid = parse_grid(args.grid) if args.grid else {}
    refuse_foreign_dir(out, None, overwrite=True)
    refuse_foreign_dir(out / "model", "encoder.json", args.overwrite, "glotpool model folder")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not (data_dir / "nli-pairs" / "train.jsonl").is_file():
        fetch_corpora(data_dir, only="nli-pairs")
    task = TaskSource(task="nli-pairs", data_dir=str(data_dir), max_train=args.max_train,
                      data_seed=args.data_seed).load()
    for split, n in (("dev", args.max_dev), ("test", args.max_test)):
        if n:
            task.splits[split] = subsample(task.splits[split], n, seed=args.data_seed)
    if not args.max_test:
        task.splits.pop("test")
    if args.no_hard_negatives:
        for ds in task.splits.values():
            ds.texts3 = None
    backbone = load_backbone(args.backbone, max_length=args.max_length, layer=args.layer,
                             **backbone_state_kwargs(args))
    spec = adapt_spec(train_states(spec, backbone, args.tokens), backbone, announce=True)
    exp = prepare_experiment(backbone, task, args.cache_dir or out / "cache", show_progress=not args.quiet,
                             overwrite=args.overwrite, shard_tokens=args.shard_tokens)
    cfg = replace(train_config(args), show_progress=not args.quiet)
    head_options = {"temperature": args.temperature, "learn_temperature": args.learn_temperature}
    chosen, dev_table, run_dir = {}, {}, out / "run"
    if grid:
        # the user's own grid, exactly: every point is a full training run of the exported model
        chosen, (rec,), dev_table = tune_and_run(spec, exp.cache, exp.data, cfg, grid, (args.seed,), out / "runs",
                                                 head_options, widen_lr=0)
        run_dir = out / "runs" / point_name(chosen) / f"seed-{args.seed}"
    else:
        rec = run_one(spec, exp.cache, exp.data, cfg, seed=args.seed, run_dir=run_dir, save_model=True,
                      head_options=head_options)
    encoder = Encoder.from_run(run_dir, backbone, **spec.states.batch_kwargs())
    from glotpool.model_card import dataset_ids

    encoder.training.update(task="nli-pairs", task_type="retrieval", datasets=dataset_ids("snli"),
                            splits={k: len(v) for k, v in task.splits.items()},
                            recipe="glotpool embed-train (NLI: in-batch + hard-negative InfoNCE)")
    encoder.save_pretrained(out / "model", overwrite=args.overwrite)
    if not args.no_st:
        import json

        from glotpool.integrations.sentence_transformers import export_sentence_transformer

        card = json.loads((out / "model" / "encoder.json").read_text())
        export_sentence_transformer(backbone, encoder.pooler, out / "st", overwrite=True, card_meta=card)
    total = time.perf_counter() - t_start
    sizes = {k: len(v) for k, v in task.splits.items()}
    atomic_write_json(out / "recipe.json", {
        "backbone": args.backbone, "pooler": spec.label, "seed": args.seed, "sizes": sizes,
        "hard_negatives": not args.no_hard_negatives, "head_options": head_options,
        "states": spec.states.as_dict(), "prompt": backbone.prompt, "grid": grid, "chosen": chosen,
        "dev_grid": dev_table, "run_dir": str(run_dir),
        "lr": chosen.get("lr", cfg.lr), "weight_decay": chosen.get("weight_decay", cfg.weight_decay),
        "cache_seconds": round(exp.cache_seconds, 1), "train_seconds": round(rec.train_seconds, 1),
        "total_seconds": round(total, 1), "best_epoch": rec.best_epoch, "dev": rec.dev, "test": rec.test,
        "trainable_parameters": rec.trainable_parameters})
    print(f"# nli-pairs (retrieval), pooler {spec.label}, frozen {args.backbone}: best epoch {rec.best_epoch}, "
          f"{rec.trainable_parameters:,} trainable parameters; " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    for split, m in (("dev", rec.dev), ("test", rec.test)):
        if m:
            print(f"{split:5s}" + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    if grid:
        print("dev grid (MRR@10): " + ", ".join(f"{k} {v:.4f}" for k, v in dev_table.items())
              + f"; chosen {point_name(chosen)}")
    print(f"time: caching {exp.cache_seconds:.1f} s, training {rec.train_seconds:.1f} s, total {total:.1f} s")
    print(f"model: {out / 'model'}" + ("" if args.no_st else f", sentence-transformers: {out / 'st'}") +
          f"  (glotpool evaluate --model {out / 'model'})", file=sys.stderr)
    return 0
