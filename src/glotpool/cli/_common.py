"""Argument groups shared by several sub-commands."""
from __future__ import annotations

import argparse

from glotpool.training.trainer import TrainConfig


def add_task_args(p: argparse.ArgumentParser) -> None:
    """A preset task, or local data files: the same arguments for every command that trains."""
    p.add_argument("--task", default=None,
                   help="preset: pang-lee, snli, nli-pairs, or a GLUE task (cola, sst2, stsb, ...)")
    p.add_argument("--data-dir", default=None, help="folder of fetched corpora (default $GLOTPOOL_DATA or ./data)")
    g = p.add_argument_group("local data files (instead of --task)")
    g.add_argument("--train", dest="train_file")
    g.add_argument("--dev", dest="dev_file", help="default: 10%% of --train")
    g.add_argument("--test", dest="test_file")
    g.add_argument("--data", dest="data_file", help="one file, split 80/10/10 (seeded)")
    g.add_argument("--task-type", default="single", choices=["single", "pair", "sts", "retrieval"],
                   help="what the files hold (presets know their own)")
    g.add_argument("--text-col", default="text")
    g.add_argument("--text-col-2", default=None)
    g.add_argument("--text-col-3", default=None, help="retrieval: a hard-negative column (optional)")
    g.add_argument("--label-col", default="label", help="label column (classification; retrieval needs none)")
    g.add_argument("--score-col", default=None, help="sts: the score column (instead of --label-col)")


def add_cache_dir_arg(p: argparse.ArgumentParser, default_help: str = "OUT/cache") -> None:
    p.add_argument("--cache-dir", default=None,
                   help=f"token-state cache folder (default {default_help}); share one between runs of a task")


def add_subsample_args(p: argparse.ArgumentParser, test: bool = True) -> None:
    """--max-train / --max-dev [/ --max-test]: seeded, stratified subsamples of the splits (for costly backbones)."""
    p.add_argument("--max-train", type=int, default=None, help="subsample train (seeded, stratified)")
    p.add_argument("--max-dev", type=int, default=None, help="subsample dev (seeded, stratified)")
    if test:
        p.add_argument("--max-test", type=int, default=None,
                       help="subsample test (seeded, stratified; report the size with the scores)")


def task_source(args: argparse.Namespace):
    """The :class:`~glotpool.data.TaskSource` named by :func:`add_task_args`' flags (+ :func:`add_subsample_args`,
    --data-seed)."""
    from glotpool.data import TaskSource

    return TaskSource(task=args.task, data_dir=args.data_dir, train_file=args.train_file, dev_file=args.dev_file,
                      test_file=args.test_file, data_file=args.data_file, task_type=args.task_type,
                      text_col=args.text_col, text_col_2=args.text_col_2,
                      text_col_3=getattr(args, "text_col_3", None), label_col=args.label_col,
                      score_col=args.score_col, max_train=getattr(args, "max_train", None),
                      max_dev=getattr(args, "max_dev", None), max_test=getattr(args, "max_test", None),
                      data_seed=getattr(args, "data_seed", 0))


def layers_arg(text: str):
    """``--layers``: ``all`` or comma-separated hidden_states indices (``-1,-4,-8``) -> "all" | tuple of ints."""
    text = text.strip()
    if text.lower() == "all":
        return "all"
    items = [x.strip() for x in text.split(",")]
    try:
        if not text or any(not x for x in items):
            raise ValueError
        return tuple(int(x) for x in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or comma-separated hidden_states indices such as "
                                         f"-1,-4,-8 (0 = embeddings, -1 = last layer), got {text!r}") from None


def add_backbone_state_args(p: argparse.ArgumentParser) -> None:
    """``--prompt`` and ``--layers``: which states the backbone returns (pass them on with
    :func:`backbone_state_kwargs`)."""
    import re

    if isinstance(p, argparse.ArgumentParser):
        # argparse takes "-1,-4,-8" for an unknown option (only "-4" looks like a number to it); widen its
        # negative-number test so `--layers -1,-4,-8` parses (`--layers=-1,-4,-8` works everywhere)
        p._negative_number_matcher = re.compile(r"^-\d+(\s*,\s*-?\d+)*$|^-\d*\.\d+$")
    add_prompt_arg(p)
    p.add_argument("--layers", type=layers_arg, default=None, metavar="all|I,J,...",
                   help="several hidden layers from one forward pass (e.g. -1,-4,-8, or all = 0..num_layers); "
                        "replaces --layer")


def add_prompt_arg(p: argparse.ArgumentParser, pools: str = "--tokens text") -> None:
    """``--prompt``: a preset name or a template with a ``{text}`` slot (``pools``: what reads the text's tokens)."""
    from glotpool.states.prompts import PROMPTS

    p.add_argument("--prompt", default=None, metavar="NAME_OR_TEMPLATE",
                   help=f"wrap every text in a prompt: a preset ({', '.join(sorted(PROMPTS))}) or a template with "
                        f"{{text}} once or twice (the last copy is the text that {pools} pools)")


def add_tokens_arg(p: argparse.ArgumentParser) -> None:
    """``--tokens``: which cached tokens the trained pooler reads (pass it on with :func:`train_states`)."""
    p.add_argument("--tokens", choices=["all", "text"], default=None,
                   help="tokens the pooler reads: all (prompt included: last = the final token) or text (the text's "
                        "own tokens; echo: the second copy); default: the --pooler spec's tokens= option, else all. "
                        "Several --layers are mixed (a learned ELMo mix) unless the spec picks layer=N")


def train_states(spec, backbone, tokens: str | None):
    """The spec with the states it trains on: its own layer= / mix= options, else a mix of every layer when the
    backbone returns several (--layers), else the one layer; ``tokens`` (--tokens) overrides the spec's."""
    from dataclasses import replace

    from glotpool.training.trainer import StateSelection

    layers = spec.states.layers
    if layers is None and len(backbone.layers) > 1:
        layers = "all"
    return replace(spec, states=StateSelection(layers, tokens or spec.states.tokens))


def backbone_state_kwargs(args: argparse.Namespace) -> dict:
    """``load_backbone`` keyword arguments from :func:`add_backbone_state_args`' flags."""
    return {"prompt": getattr(args, "prompt", None), "layers": getattr(args, "layers", None)}


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """What `glotpool cache` and `glotpool dist cache|merge` take: the data file, backbone and cache settings."""
    from glotpool.states.backbone import DTYPE_CHOICES
    from glotpool.states.cache import STORE_DTYPES

    p.add_argument("--backbone", default="minilm", help="preset (minilm, smollm2), hub id or model folder")
    p.add_argument("--data", required=True, help="CSV / TSV / JSONL file with a header")
    p.add_argument("--out", required=True, help="cache folder to create (or reuse / resume)")
    p.add_argument("--text-col", default="text", help="text column")
    p.add_argument("--text-col-2", default=None, help="second text column of pair data (cached too)")
    p.add_argument("--layer", type=int, default=-1, help="hidden layer (0 = embeddings, -1 = last)")
    add_backbone_state_args(p)
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float16", choices=sorted(STORE_DTYPES), help="storage dtype")
    p.add_argument("--backbone-dtype", default="auto", choices=list(DTYPE_CHOICES),
                   help="backbone compute dtype; auto = bfloat16 on GPUs and on CPUs with AVX512-BF16/AMX, else "
                        "float32 (the cache key records the resolved dtype)")
    p.add_argument("--shard-tokens", type=int, default=1_000_000, help="tokens per shard file")
    p.add_argument("--padding-side", choices=["left", "right"], default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace a cache built with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_train_args(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=defaults.epochs)
    g.add_argument("--lr", type=float, default=defaults.lr)
    g.add_argument("--batch-size", type=int, default=defaults.batch_size)
    g.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    g.add_argument("--patience", type=int, default=defaults.patience, help="early stopping; 0 = off")
    g.add_argument("--grad-clip", type=float, default=defaults.grad_clip)
    g.add_argument("--class-weights", action="store_true", help="inverse-frequency class weights")
    g.add_argument("--metric", default=None, help="dev metric for model selection (default by task type)")
    g.add_argument("--schedule", default=defaults.schedule, choices=["constant", "cosine", "linear"],
                   help="learning rate schedule over --epochs")
    g.add_argument("--warmup", type=float, default=defaults.warmup, help="share of steps of linear warm-up")
    g.add_argument("--device", default="cpu")
    g.add_argument("--precision", default=defaults.precision, choices=["fp32", "bf16", "auto"],
                   help="bf16 = bfloat16 autocast (faster on CPUs with AVX512-BF16/AMX and on GPUs)")


def add_budget_args(p: argparse.ArgumentParser, grid_flag: str = "--grid") -> None:
    """``--budget`` and the converged budget's dev grid (``grid_flag``; read back as ``args.train_grid``)."""
    from glotpool.experiments.budgets import BUDGET_NAMES, CONVERGED_GRID, MAX_LR_EXTENSIONS

    p.add_argument("--budget", default="converged", choices=BUDGET_NAMES,
                   help="converged: cosine decay, early stopping, lr x weight decay chosen on dev; "
                        "paper: the published 3 epochs at lr 1e-4; fixed: exactly --lr/--epochs/...")
    p.add_argument(grid_flag, nargs="*", default=None, metavar="KEY=V1,V2", dest="train_grid",
                   help="converged budget's dev grid, e.g. lr=1e-3,1e-2 weight_decay=0,0.01 (default "
                        + " ".join(f"{k}={','.join(f'{v:g}' for v in vs)}" for k, vs in CONVERGED_GRID.items())
                        + f"); while dev picks an edge lr, the lr axis grows a step past it (at most "
                        f"{MAX_LR_EXTENSIONS} steps)")


def train_grid(args: argparse.Namespace) -> dict | None:
    """The parsed ``--grid`` / ``--train-grid`` of :func:`add_budget_args` (None: the budget's own)."""
    from glotpool.experiments.sweep import parse_grid

    return parse_grid(args.train_grid) if args.train_grid else None


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                       patience=args.patience, grad_clip=args.grad_clip, class_weights=args.class_weights,
                       metric=args.metric, device=args.device, precision=args.precision,
                       schedule=args.schedule, warmup=args.warmup)


def csv_list(cast=str):
    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return tuple(cast(x) for x in items)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def pooler_list(text: str) -> tuple[str, ...]:
    """Poolers separated by spaces or ';' (commas belong to a pooler's options: glot:conv=gcn,tau=0.4)."""
    items = [x.strip() for x in text.replace(";", " ").split() if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected pooler names, e.g. 'mean adapool glot'")
    return tuple(items)
