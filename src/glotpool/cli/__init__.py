"""``glotpool`` command line. Each sub-command lives in its own module with ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Sub-command modules, in the order `glotpool --help` lists them. Each defines register(subparsers).
COMMANDS = [
    "run",
    "fetch_data",
    "cache",
    "train",
    "embed_train",
    "evaluate",
    "encode",
    "predict",
    "compare",
    "layers",
    "stress",
    "sweep",
    "dist",
    "export_st",
    "bench_efficiency",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    from glotpool import __version__

    parser = argparse.ArgumentParser(
        prog="glotpool",
        description="Sentence vectors from a frozen language model with GLOT token-graph pooling.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"glotpool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"glotpool.cli.{name}").register(sub)
    _conventions(parser)
    return parser


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every flag's default, unless its help already says what the default is."""

    def _get_help_string(self, action):
        help = action.help or ""
        if "default" in help.lower():
            return help
        return super()._get_help_string(action)


# Help for the flags several commands share, where a command's own add_argument gives none.
_SHARED_HELP = {
    "--device": "torch device: auto (CUDA when available), cpu, cuda, cuda:1, ...",
    "--batch-size": "texts (or training examples) per batch",
    "--quiet": "no progress bars (bars also turn themselves off when stderr is not a terminal)",
    "--out": "output folder",
    "--backbone": "frozen backbone: a preset (minilm, smollm2), a Hub id or a model folder",
    "--seed": "random seed (pooler init, batch order)",
    "--seeds": "random seeds, comma-separated: one run per seed",
    "--stress-seeds": "seeds of the stress-test runs, comma-separated",
    "--compare-seeds": "seeds of the comparison runs, comma-separated",
    "--max-length": "truncate texts to this many tokens",
    "--layer": "backbone hidden layer to pool (0 = embeddings, -1 = last)",
    "--max-train": "subsample the training split to this many examples (seeded, stratified)",
    "--padding-side": "pad on this side (default: the tokenizer's own)",
    "--train": "training file (CSV / TSV / JSONL with a header)",
    "--test": "test file (default: none)",
    "--text-col": "text column",
    "--text-col-2": "second text column (pair / STS / retrieval data)",
    "--label-col": "label column (classification)",
    "--poolers": "poolers to compare, separated by spaces or ';' (options after ':', e.g. glot:conv=gcn,tau=0.4)",
    "--epochs": "maximum training epochs",
    "--lr": "learning rate (AdamW)",
    "--weight-decay": "AdamW weight decay",
    "--grad-clip": "clip the gradient norm to this (0 = off)",
    "--n-train": "training examples per stress-test run",
    "--n-eval": "evaluation examples per stress-test run",
    "--only": "fetch only these corpora (comma-separated)",
    "--port": "TCP port to listen on",
    "--log-level": "logging level",
}


def _conventions(parser: argparse.ArgumentParser) -> None:
    """Every (nested) sub-command: defaults shown in --help, help on every flag, and a --quiet flag."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for p in dict.fromkeys(action.choices.values()):  # aliases share a parser
            p.formatter_class = DefaultsHelpFormatter
            leaf = not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
            if leaf and not any("--quiet" in a.option_strings for a in p._actions):
                p.add_argument("--quiet", action="store_true", help=_SHARED_HELP["--quiet"])
            for a in p._actions:
                if a.option_strings and not a.help and a.help is not argparse.SUPPRESS:
                    a.help = _SHARED_HELP.get(a.option_strings[-1]) or _SHARED_HELP.get(a.option_strings[0])
            _conventions(p)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        _quiet()
    from glotpool.data.fetch import FetchError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, FetchError) as e:
        # User errors: one clear line, no traceback. Programming errors still raise.
        print(f"glotpool {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: read-only folder, a file where a folder should be, disk full
        if e.errno is None:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
        print(f"glotpool {args.command}: error: {_one_line(e)}{where}; check the path, its permissions and the "
              f"free disk space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glotpool {args.command}: interrupted; rerun the same command to resume"
              if args.command in _RESUMABLE else f"glotpool {args.command}: interrupted; no output was written",
              file=sys.stderr)
        return 130


# Commands whose finished work survives an interruption (cache shards, finished runs): a rerun continues.
_RESUMABLE = {"run", "cache", "train", "embed-train", "evaluate", "compare", "layers", "stress", "sweep", "dist",
              "fetch-data"}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _quiet() -> None:
    """--quiet for every command: tqdm bars off (also those a command does not wire to its flag), library
    progress bars and info logs off."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import tqdm as _tqdm
    import tqdm.std as _std

    init = _std.tqdm.__init__
    if not getattr(init, "_glotpool_quiet", False):
        def quiet_init(self, *a, **kw):
            kw["disable"] = True
            init(self, *a, **kw)

        quiet_init._glotpool_quiet = True
        _std.tqdm.__init__ = quiet_init
    del _tqdm


if __name__ == "__main__":
    sys.exit(main())
