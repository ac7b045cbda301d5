#!/usr/bin/env python
"""Fetch the offline corpora into a data folder (thin wrapper over ``glotpool.data.fetch``).

Usage: python scripts/fetch_data.py [--data-dir data] [--only pang-lee|snli]
"""
import sys
from pathlib import Path

try:
    from glotpool.data.fetch import main
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from glotpool.data.fetch import main

if __name__ == "__main__":
    raise SystemExit(main())
