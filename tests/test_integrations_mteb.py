"""MTEB integration: encoder protocol + the real mteb.evaluate pipeline on offline (local-file) tasks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mteb")

from glotpool.data import TextDataset, read_table, split_dataset  # noqa: E402
from glotpool.integrations.mteb import (  # noqa: E402
    MTEBEncoder, classification_task, evaluate_mteb, sts_task)

DATA = Path(__file__).parent / "data"
SNLI_SCORE = {"entailment": 5.0, "neutral": 2.5, "contradiction": 0.0}


def _sts_pairs(n=40) -> TextDataset:
    rows = [json.loads(line) for line in (DATA / "snli" / "test.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[:n]
    return TextDataset([r["premise"] for r in rows], [r["hypothesis"] for r in rows],
                       [SNLI_SCORE[r["label"]] for r in rows])


def _pang_lee():
    ds = read_table(DATA / "pang-lee" / "sentences.csv", text_col="text", label_col="label").subset(range(0, 200, 2))
    tr, _, te = split_dataset(ds, (0.7, 0.0, 0.3), seed=0)
    return tr, te


@pytest.fixture(scope="module")
def encoder(minilm):
    from glotpool.encoder import Encoder
    from glotpool.pooling import build_pooler

    return Encoder(minilm, build_pooler("mean", in_dim=minilm.dim))


def test_task_validation():
    tr, te = _pang_lee()
    bad_test = TextDataset(te.texts[:2], labels=["positive", "neutral"])
    with pytest.raises(ValueError, match="never occur in train"):
        classification_task(tr, bad_test)
    pairs = _sts_pairs(4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sts_task(pairs, 0, 1)
    with pytest.raises(ValueError, match="texts2"):
        sts_task(TextDataset(["a", "b"], labels=[1.0, 2.0]), 0, 5)
    with pytest.raises(ValueError, match="task_names"):
        evaluate_mteb(object())
    with pytest.raises(ValueError, match="glotpool Encoder"):
        MTEBEncoder(object())


@pytest.mark.slow
def test_encoder_protocol_matches_encoder(encoder):
    from torch.utils.data import DataLoader

    texts = ["a fine film .", "dull .", "", "the plot kept me guessing until the end ."]
    loader = DataLoader([{"text": t} for t in texts], batch_size=3,
                        collate_fn=lambda b: {"text": [x["text"] for x in b]})
    wrapper = MTEBEncoder(encoder, name="test/minilm-mean")
    task = sts_task(_sts_pairs(4), 0, 5)
    got = wrapper.encode(loader, task_metadata=task.metadata, hf_split="test", hf_subset="default",
                         batch_size=2, show_progress_bar=False)
    want = encoder.encode([t or "." for t in texts], show_progress=False)  # empty text -> "." (documented)
    assert got.shape == (4, encoder.dim)
    np.testing.assert_allclose(got, want, atol=1e-5)
    meta = wrapper.mteb_model_meta
    assert meta.name == "test/minilm-mean" and meta.embed_dim == encoder.dim and len(meta.revision) == 12


@pytest.mark.slow
def test_offline_mteb_classification_and_sts(encoder, tmp_path):
    tr, te = _pang_lee()
    tasks = [classification_task(tr, te, n_experiments=1), sts_task(_sts_pairs(40), 0, 5)]
    res = evaluate_mteb(encoder, tasks=tasks, batch_size=32, output_folder=tmp_path / "mteb", show_progress=False)
    assert set(res) == {"LocalClassification", "LocalSTS"}
    cls, sts = res["LocalClassification"], res["LocalSTS"]
    assert cls["main_score_name"] == "accuracy" and sts["main_score_name"] == "cosine_spearman"
    assert 0.0 <= cls["main_score"] <= 1.0 and -1.0 <= sts["main_score"] <= 1.0
    # mean-pooled MiniLM is a real sentence encoder: clearly above chance on both
    assert cls["main_score"] > 0.6 and sts["main_score"] > 0.3
    assert sts["scores"]["test"][0]["main_score"] == pytest.approx(sts["main_score"])
    assert list((tmp_path / "mteb").rglob("LocalSTS.json"))  # MTEB wrote its result file
