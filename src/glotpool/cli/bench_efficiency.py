"""``glotpool bench-efficiency``: GLOT on cached states vs LoRA vs full fine-tuning, measured side by side."""
from __future__ import annotations

import argparse
import sys

from glotpool.cli._common import csv_list


def register(subparsers) -> None:
    from glotpool.experiments.efficiency import METHODS, BenchConfig

    d = BenchConfig()
    p = subparsers.add_parser(
        "bench-efficiency", help="time / memory / parameters of GLOT vs LoRA vs full fine-tuning",
        description="Same backbone, data and number of optimizer steps for every method, each phase in its own "
                    "process (peak memory = its own). Writes OUT/results.json, OUT/results.md and "
                    "OUT/efficiency.png and prints the markdown table.")
    p.add_argument("--backbone", default=d.backbone, help="minilm | smollm2 | hub id | model folder")
    p.add_argument("--out", default=None, help="output folder (default runs/bench-efficiency-BACKBONE)")
    p.add_argument("--task", default=d.task, help="offline classification preset (default pang-lee)")
    p.add_argument("--data-dir", default=None, help="data folder (default $GLOTPOOL_DATA or ./data)")
    p.add_argument("--n-train", type=int, default=None, help=f"train sentences (default {d.n_train})")
    p.add_argument("--n-test", type=int, default=None, help=f"test sentences (default {d.n_test})")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps per method (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size}")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs to amortise GLOT's caching over (default {d.epochs})")
    p.add_argument("--max-length", type=int, default=None, help=f"truncation in tokens (default {d.max_length})")
    p.add_argument("--pooler", default=None, help=f"GLOT pooler spec (default {d.pooler!r})")
    p.add_argument("--lora-r", type=csv_list(int), default=None,
                   help=f"LoRA rank(s), comma-separated: one LoRA run each, GLOT reported against every one "
                        f"(default {','.join(map(str, d.lora_ranks))})")
    p.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default: PEFT's default, 8)")
    p.add_argument("--lora-targets", type=csv_list(), default=None,
                   help="LoRA target modules, comma-separated (default: PEFT's default for the model type, e.g. "
                        "BERT query,value; else the attention projections)")
    p.add_argument("--methods", type=csv_list(), default=None, help=f"subset of {','.join(METHODS)}")
    p.add_argument("--threads", type=int, default=None, help=f"torch threads per worker (default {d.threads})")
    p.add_argument("--device", default=None, help="cpu | cuda (default cpu)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke configuration (tests)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.experiments.efficiency import BenchConfig, run_benchmark, tiny_config

    fields = {"backbone": args.backbone, "task": args.task, "data_dir": args.data_dir, "n_train": args.n_train,
              "n_test": args.n_test, "steps": args.steps, "batch_size": args.batch_size, "epochs": args.epochs,
              "max_length": args.max_length, "pooler": args.pooler, "lora_ranks": args.lora_r,
              "lora_alpha": args.lora_alpha, "lora_targets": args.lora_targets,
              "methods": args.methods, "threads": args.threads, "device": args.device, "seed": args.seed}
    fields = {k: v for k, v in fields.items() if v is not None}
    cfg = tiny_config(**fields) if args.tiny else BenchConfig(**fields)
    out = args.out or f"runs/bench-efficiency-{cfg.backbone}"
    report = run_benchmark(cfg, out, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(report["table"])
    print(f"results: {out}/results.json, {out}/results.md, {out}/efficiency.png", file=sys.stderr)
    return 0
