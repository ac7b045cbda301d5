"""Shared test set-up: offline hub, one $GLOTPOOL_HOME per session, one MiniLM backbone per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def glotpool_home(tmp_path_factory):
    """Keep hash memos and converted models out of the user's ~/.cache (reuse a caller-provided home)."""
    if not os.environ.get("GLOTPOOL_HOME"):
        os.environ["GLOTPOOL_HOME"] = str(tmp_path_factory.mktemp("glotpool-home"))
    return os.environ["GLOTPOOL_HOME"]


@pytest.fixture(scope="session")
def minilm(glotpool_home):
    from glotpool.states.backbone import load_backbone

    return load_backbone("minilm")
