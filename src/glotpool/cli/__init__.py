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
        print(f"glotpool {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
