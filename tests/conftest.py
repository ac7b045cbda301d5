"""Shared test set-up: offline hub, one $GLOTPOOL_HOME per session, one MiniLM backbone per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# fp32 everywhere, as on a CPU without native bf16: many tests compare two paths (batched vs one by one, CLI vs API,
# cache vs live states) to 1e-5, which holds in fp32 but not in bf16, where padding changes the rounding.
# test_bf16.py covers bf16 by setting the capability itself. Set before anything asks (cpu_has_bf16 is cached).
os.environ.setdefault("GLOTPOOL_CPU_BF16", "0")


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
