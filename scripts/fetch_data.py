#!/usr/bin/env python
"""Fetch the offline corpora into a data folder: the same as ``glotpool fetch-data`` (see its --help).

Usage: python scripts/fetch_data.py [--data-dir data] [--only pang-lee|snli]
"""
import sys
from pathlib import Path

try:
    from glotpool.cli import main
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from glotpool.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["fetch-data", *sys.argv[1:]]))
