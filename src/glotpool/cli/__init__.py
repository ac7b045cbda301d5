"""``glotpool`` command line. Each sub-command lives in its own module with ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order `glotpool --help` lists them. Each defines register(subparsers).
COMMANDS = [
    "run",
    "fetch_data",
    "cache",
    "train",
    "encode",
    "predict",
    "compare",
    "stress",
    "sweep",
    "dist",
    "export_st",
    "bench_efficiency",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glotpool",
        description="Sentence vectors from a frozen language model with GLOT token-graph pooling.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"glotpool.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
_RESUMABLE = {"run", "cache", "train", "compare", "stress", "sweep", "dist", "fetch-data"}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
