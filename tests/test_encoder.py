"""Encoder: encode == pooling of live backbone states, save/load round trip, backbone-mismatch refusal, heads."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from glotpool.states.backbone import load_backbone  # noqa: E402
from glotpool.encoder import Encoder  # noqa: E402
from glotpool.pooling import build_pooler  # noqa: E402
from glotpool.training.heads import build_head  # noqa: E402

SENTS = ["a cat .", "the quick brown fox jumps over the lazy dog near the river bank .",
         "i loved this movie , the acting was superb and the plot kept me guessing until the end .",
         "no .", "what a boring , predictable film", "an ok sentence of medium length here ."]
PAIRS = ["a cat sleeps .", "the dog runs in the park .", "it rains .", "nobody came .", "a film", "short ."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """1 torch thread: on a shared 2-core machine, 2 threads make MiniLM forwards ~10-20x slower and erratic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLOTPOOL_HOME", os.environ.get("GLOTPOOL_HOME") or str(tmp_path_factory.mktemp("home")))
        yield load_backbone("minilm")


def _glot(dim, seed=0):
    torch.manual_seed(seed)
    return build_pooler("glot", in_dim=dim, hidden_dim=32, num_layers=2)


def _with_config(bb, **changes):
    """The same loaded model under another config (e.g. another layer): no second load."""
    return dataclasses.replace(bb, config=dataclasses.replace(bb.config, **changes), _fingerprint=None)


@pytest.mark.slow
def test_encode_equals_pooling_of_live_backbone_states(minilm):
    pooler = _glot(minilm.dim)
    enc = Encoder(minilm, pooler)
    assert enc.dim == pooler.out_dim == 384 + 2 * 32
    z = enc.encode(SENTS, batch_size=2, show_progress=False)  # length-sorted batches of 2, input order restored
    with torch.no_grad():
        want = pooler(*minilm.encode(SENTS)).numpy()
    assert z.shape == (len(SENTS), enc.dim) and z.dtype == np.float32
    np.testing.assert_allclose(z, want, atol=2e-5, rtol=1e-4)
    # one text at a time gives the same rows (no dependence on the batch companions beyond float noise)
    one = np.concatenate([enc.encode([s], show_progress=False) for s in SENTS[:3]])
    np.testing.assert_allclose(one, z[:3], atol=2e-5, rtol=1e-4)
    zt = enc.encode(SENTS, normalize=True, convert_to="torch", show_progress=False)
    assert isinstance(zt, torch.Tensor) and not zt.is_inference()
    torch.testing.assert_close(zt.norm(dim=-1), torch.ones(len(SENTS)))
    np.testing.assert_allclose(zt.numpy(), want / np.linalg.norm(want, axis=1, keepdims=True), atol=2e-5)
    assert enc.encode("a cat .", show_progress=False).shape == (enc.dim,)  # as SentenceTransformer.encode
    assert enc.encode([], show_progress=False).shape == (0, enc.dim)
    bf = enc.encode(SENTS, dtype="bfloat16", show_progress=False)  # autocast backbone: close, not equal
    assert np.isfinite(bf).all() and not np.array_equal(bf, z)
    assert np.abs(bf - z).max() < 0.1 * np.abs(z).max()


@pytest.mark.slow
def test_bad_inputs_are_errors_naming_the_index(minilm):
    enc = Encoder(minilm, build_pooler("mean", in_dim=minilm.dim))
    with pytest.raises(ValueError, match=r"index\(es\) 2 are empty"):
        enc.encode(["a", "b", "  "], show_progress=False)
    with pytest.raises(ValueError, match=r"index\(es\) 1 hold int"):
        enc.encode(["a", 3], show_progress=False)
    with pytest.raises(ValueError, match="convert_to"):
        enc.encode(["a"], convert_to="list")
    with pytest.raises(ValueError, match="hidden size 384"):
        Encoder(minilm, build_pooler("mean", in_dim=576))
    with pytest.raises(ValueError, match="no classifier head"):
        enc.predict(["a"])


@pytest.mark.slow
def test_save_load_round_trip_identical_vectors_and_predictions(minilm, tmp_path):
    pooler = _glot(minilm.dim, seed=1)
    torch.manual_seed(2)
    head = build_head("single", pooler.out_dim, num_labels=3)
    enc = Encoder(minilm, pooler, head, label_names=["neg", "neu", "pos"])
    assert enc.task_type == "single"
    enc.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"encoder.json", "labels.json", "pooler", "head",
                                                           "README.md"}
    meta = json.loads((tmp_path / "m" / "encoder.json").read_text())
    ref = meta["backbone"]
    assert ref["name_or_path"] == "minilm" and ref["hidden_size"] == 384 and ref["max_length"] == 256
    assert ref["weights_sha256"] == minilm.fingerprint()["weights_sha256"] and len(ref["weights_sha256"]) == 64

    back = Encoder.from_pretrained(tmp_path / "m")  # loads MiniLM from the stored reference
    assert back.label_names == ["neg", "neu", "pos"] and back.task_type == "single" and back.dim == enc.dim
    z0, z1 = enc.encode(SENTS, show_progress=False), back.encode(SENTS, show_progress=False)
    np.testing.assert_array_equal(z0, z1)
    p0, p1 = enc.predict_proba(SENTS), back.predict_proba(SENTS)
    np.testing.assert_array_equal(p0, p1)
    assert p0.shape == (len(SENTS), 3)
    np.testing.assert_allclose(p0.sum(1), 1.0, rtol=1e-5)
    labels = back.predict(SENTS)
    assert labels == enc.predict(SENTS) and labels == [["neg", "neu", "pos"][i] for i in p0.argmax(1)]
    assert back.predict([]) == [] and back.predict_proba([]).shape == (0, 3)
    # saving again over the folder replaces it whole
    Encoder(minilm, build_pooler("mean", in_dim=384)).save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "head").exists()
    assert Encoder.from_pretrained(tmp_path / "m", backbone=minilm).pooler.name == "mean"


@pytest.mark.slow
def test_refuses_a_different_backbone(minilm, tmp_path):
    path = tmp_path / "m"
    Encoder(minilm, _glot(minilm.dim)).save_pretrained(path)
    meta = json.loads((path / "encoder.json").read_text())

    def tampered(edit):
        m = json.loads(json.dumps(meta))
        edit(m["backbone"])
        (path / "encoder.json").write_text(json.dumps(m))

    tampered(lambda b: b.update(weights_sha256="0" * 64))
    with pytest.raises(ValueError, match=r"weights_sha256: trained on '000000000000\.\.\.'.*check_backbone=False"):
        Encoder.from_pretrained(path, backbone=minilm)
    ok = Encoder.from_pretrained(path, backbone=minilm, check_backbone=False)  # the override works
    assert ok.dim == 384 + 64
    tampered(lambda b: b.update(hidden_size=768))
    with pytest.raises(ValueError, match="hidden_size: trained on 768, found 384"):
        Encoder.from_pretrained(path, backbone=minilm)
    tampered(lambda b: b["fingerprint"].update(max_length=128))
    with pytest.raises(ValueError, match="max_length: trained on 128, found 256"):
        Encoder.from_pretrained(path, backbone=minilm)
    tampered(lambda b: None)  # untouched again: loads
    Encoder.from_pretrained(path, backbone=minilm)
    with pytest.raises(ValueError, match="layer: trained on 6, found 3"):  # same weights, other layer
        Encoder.from_pretrained(path, backbone=_with_config(minilm, layer=3))
    with pytest.raises(FileNotFoundError, match="encoder.json is missing"):
        Encoder.from_pretrained(tmp_path)


@pytest.mark.slow
def test_pair_classifier_similarity_and_truncation_report(minilm):
    pooler = _glot(minilm.dim)
    torch.manual_seed(0)
    head = build_head("pair", pooler.out_dim, num_labels=2, features="full")
    enc = Encoder(minilm, pooler, head, label_names=["no", "yes"])
    proba = enc.predict_proba(SENTS, PAIRS)
    z1 = torch.from_numpy(enc.encode(SENTS, show_progress=False))
    z2 = torch.from_numpy(enc.encode(PAIRS, show_progress=False))
    with torch.no_grad():
        want = torch.softmax(head(z1, z2), -1).numpy()
    np.testing.assert_allclose(proba, want, atol=1e-6)
    assert set(enc.predict(SENTS, PAIRS)) <= {"no", "yes"}
    with pytest.raises(ValueError, match="pair classifier"):
        enc.predict(SENTS)
    with pytest.raises(ValueError, match="parallel"):
        enc.predict(SENTS, PAIRS[:2])
    sim = enc.similarity(SENTS, PAIRS)
    np.testing.assert_allclose(sim, torch.nn.functional.cosine_similarity(z1, z2).numpy(), atol=1e-6)
    assert sim.shape == (len(SENTS),) and np.isclose(enc.similarity(["a cat ."], ["a cat ."])[0], 1.0, atol=1e-5)
    rep = enc.truncation_report(SENTS[:2] + ["word " * 300])
    assert rep["truncated"] == 1 and rep["indices"] == [2] and rep["max_length"] == 256 and rep["longest"] == 302
