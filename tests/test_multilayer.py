"""Multi-layer states: one forward pass, cache round trip with a prompt, layer / token selection, resume, keys,
and an Encoder that reproduces the selection it was trained on."""
import dataclasses
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import glotpool.states.cache as cache_mod
from glotpool.io_utils import sha256_texts
from glotpool.states.backbone import load_backbone
from glotpool.states.cache import build_cache, cache_key, open_cache
from glotpool.states.selection import select_states

TEXTS = ["a fine film .", "dull , {braces} and flat .", "the cat sat on the mat .", "it moved me",
         "a quiet story about an old man and the sea", "no ."]
LAYERS = (-1, 0, 3)
KW = dict(batch_size=2, shard_tokens=40, show_progress=False)


def single(bb, layer):
    """The same model, returning only ``layer`` (today's single-layer path)."""
    return dataclasses.replace(bb, config=dataclasses.replace(bb.config, layers=None, layer=layer),
                               _fingerprint=None)


@pytest.fixture(scope="module")
def smol(glotpool_home):
    return load_backbone("smollm2", max_length=32, layers=LAYERS, prompt="echo", padding_side="left")


@pytest.fixture(scope="module")
def mini(glotpool_home):
    return load_backbone("minilm", max_length=32, layers=LAYERS)


@pytest.fixture(scope="module")
def built(smol, tmp_path_factory):
    return build_cache(smol, TEXTS, tmp_path_factory.mktemp("ml") / "c", **KW)


@pytest.mark.parametrize("name", ["mini", "smol"])
def test_each_layer_equals_the_single_layer_backbone_in_one_pass(request, name):
    bb = request.getfixturevalue(name)
    calls = []
    hook = bb.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        H, mask = bb.encode(TEXTS[:2])
    finally:
        hook.remove()
    assert len(calls) == 1 and H.shape == (2, mask.shape[1], len(LAYERS), bb.dim)
    assert bb.layers == (bb.num_layers, 0, 3)
    for k, layer in enumerate(LAYERS):
        h1, m1 = single(bb, layer).encode(TEXTS[:2])
        assert torch.equal(m1, mask)
        m = mask.bool()
        torch.testing.assert_close(H[:, :, k][m], h1[m], rtol=1e-5, atol=1e-5)


def test_layer_config_errors(mini):
    with pytest.raises(ValueError, match="not both"):
        load_backbone("minilm", layer=2, layers=(1, 2))
    with pytest.raises(ValueError, match="twice"):
        load_backbone("minilm", layers=(-1, 6))
    with pytest.raises(ValueError, match="out of range"):
        load_backbone("minilm", layers=(1, 9))
    assert load_backbone("minilm", layers="all").layers == tuple(range(7))


def test_cache_round_trip_equals_direct_encoding(smol, built):
    assert built.layers == smol.layers == (30, 0, 3) and built.prompt == smol.prompt and built.dim == 576
    assert built.multi_layer and "3 layers" in built.size_str()
    for i, text in enumerate(TEXTS):
        H, mask = smol.encode([text])                              # [1, L, K, D], one text: no padding
        torch.testing.assert_close(built.get(i).float(), H[0][mask[0].bool()], rtol=2e-3, atol=2e-3)
    # the stored text span is the tokenizer's text mask of the prompted text (second copy of the echo)
    enc = smol.tokenize(TEXTS, padding=False, return_tensors=None)
    for i in range(len(TEXTS)):
        on = [j for j, m in enumerate(enc["text_mask"][i]) if m]
        assert (int(built.text_start[i]), int(built.text_end[i])) == (on[0], on[-1] + 1)
        assert on[0] > len(enc["input_ids"][i]) // 2  # echo: the text's second copy, in the second half


def test_batch_selects_layers_and_tokens(smol, built):
    idx = [4, 0, 2]
    H, mask = built.batch(idx)
    assert H.shape == (3, mask.shape[1], 3, 576)
    h_last, m = built.batch(idx, layers=-1)
    assert h_last.shape == (3, mask.shape[1], 576) and torch.equal(m, mask)
    torch.testing.assert_close(h_last, H[:, :, 0])
    torch.testing.assert_close(built.batch(idx, layers=30)[0], h_last)  # absolute index = -1
    h2, _ = built.batch(idx, layers=[3, -1])
    torch.testing.assert_close(h2, H[:, :, [2, 0]])
    _, tmask = built.batch(idx, tokens="text")
    assert tmask.sum() < mask.sum() and not (tmask.bool() & ~mask.bool()).any()
    for r, i in enumerate(idx):
        on = tmask[r].nonzero().flatten()
        assert (int(on[0]), int(on[-1]) + 1) == (int(built.text_start[i]), int(built.text_end[i]))
    # the one selection function gives the same on the backbone's own (left-padded) output
    Hb, mb = smol.encode([TEXTS[i] for i in idx])
    tb = smol.tokenize([TEXTS[i] for i in idx])["text_mask"]
    hs, ms = select_states(Hb, mb, tb, smol.layers, (3, -1), "text", num_layers=smol.num_layers)
    assert hs.shape[2:] == (2, 576) and torch.equal(ms.sum(1), tmask.sum(1))
    for r in range(3):  # the text tokens' states agree position by position (cache right-, backbone left-padded)
        torch.testing.assert_close(hs[r][ms[r].bool()], h2[r][tmask[r].bool()], rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match=r"not held.*\[30, 0, 3\]"):
        built.batch(idx, layers=5)
    with pytest.raises(ValueError, match="out of range"):
        built.batch(idx, layers=-40)
    with pytest.raises(ValueError, match="tokens must be"):
        built.batch(idx, tokens="prompt")


def test_single_layer_cache_selection(mini, tmp_path):
    c = build_cache(single(mini, -1), TEXTS, tmp_path / "one", **KW)
    assert c.layers == (6,) and c.prompt is None and not c.multi_layer and c.text_start is None
    H, mask = c.batch([0, 1])
    assert H.shape == (2, mask.shape[1], 384)
    assert torch.equal(c.batch([0, 1], layers=-1)[0], H)
    assert c.batch([0, 1], layers=(6,))[0].shape == (2, mask.shape[1], 1, 384)
    assert torch.equal(c.batch([0, 1], tokens="text")[1], mask)  # no prompt: the text is every token
    with pytest.raises(ValueError, match=r"not held.*\[6\]"):
        c.batch([0], layers=3)


def test_interrupted_multilayer_build_resumes_byte_identical(smol, built, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real, writes = cache_mod._write_shard, []

    def dying(path, states):
        if len(writes) == 1:
            raise KeyboardInterrupt  # killed while writing the second shard
        writes.append(path)
        return real(path, states)

    monkeypatch.setattr(cache_mod, "_write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(smol, TEXTS, out, **KW)
    monkeypatch.setattr(cache_mod, "_write_shard", real)
    calls = []
    fwd = smol.forward_batch
    monkeypatch.setattr(smol, "forward_batch", lambda b: calls.append(1) or fwd(b))
    resumed = build_cache(smol, TEXTS, out, **KW)
    assert 0 < len(calls) < len(TEXTS) // KW["batch_size"]  # the finished shard was not encoded again
    files = lambda d: {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != ".lock"}
    assert files(out) == files(built.path) and resumed.key == built.key


def test_cache_key_depends_on_prompt_and_layers(smol, mini):
    fp = lambda bb: cache_key(bb.fingerprint(), sha256_texts(TEXTS), "float16")
    base = single(mini, -1)
    keys = {fp(base), fp(mini), fp(dataclasses.replace(mini, config=dataclasses.replace(mini.config, layers=(-1,)),
                                                       _fingerprint=None)),
            fp(dataclasses.replace(base, config=dataclasses.replace(base.config, prompt="echo"), _fingerprint=None)),
            fp(dataclasses.replace(base, config=dataclasses.replace(base.config, prompt="prompteol"),
                                   _fingerprint=None))}
    assert len(keys) == 5
    assert mini.fingerprint()["layers"] == [6, 0, 3] and "layer" not in mini.fingerprint()
    assert smol.fingerprint()["prompt"] == smol.prompt and "prompt" not in base.fingerprint()


# Keys computed on the code BEFORE prompts / multi-layer states existed (commit 04e0e45, this environment's
# minilm / smollm2 packages and transformers): a single-layer, prompt-free backbone must keep them, or every
# existing cache and resumable run would be rebuilt. They change only if the packages' files or the tokenizer
# set-up change.
PINNED_TEXTS = ["a fine film .", "dull , {braces} and flat .", "the cat sat on the mat ."]
PINNED = {("minilm", ()): "0ad95cbeddb9bdea85fadfe014e42f5cda4b7673020a36057c2969c70030288b",
          ("minilm", (("layer", 3),)): "06366e6c9a47b1640b3c7173ee932d890c5cb3f495099ba266eec26f0987e34b",
          ("smollm2", (("padding_side", "left"),)): "02d7779bf077656c678fdf03ee45e89009593234acec2c494ac8bb8fb114ea4e"}


@pytest.mark.parametrize("name,kw", list(PINNED))
def test_single_layer_key_is_unchanged(name, kw, glotpool_home):
    bb = load_backbone(name, max_length=32, dtype="float32", **dict(kw))
    assert cache_key(bb.fingerprint(), sha256_texts(PINNED_TEXTS), "float16") == PINNED[name, kw]


def test_encoder_round_trip_reproduces_the_trained_selection(smol, tmp_path):
    from glotpool.encoder import Encoder
    from glotpool.pooling import build_pooler

    pooler = build_pooler("mean", in_dim=smol.dim)
    enc = Encoder(smol, pooler, layers=3, tokens="text")
    texts = TEXTS[:3]
    H, _ = smol.encode(texts)
    tm = smol.tokenize(texts)["text_mask"].unsqueeze(-1).float()
    by_hand = (H[:, :, 2] * tm).sum(1) / tm.sum(1)  # mean over the echo's second copy, layer 3
    torch.testing.assert_close(enc.encode(texts, convert_to="torch"), by_hand, rtol=1e-4, atol=1e-4)
    enc.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "encoder.json").read_text())
    assert meta["states"] == {"layers": 3, "tokens": "text"}
    assert meta["backbone"]["layers"] == list(LAYERS) and meta["backbone"]["prompt"] == smol.prompt
    back = Encoder.from_pretrained(tmp_path / "m")  # finds the preset again, with its prompt and layers
    assert back.backbone.prompt == smol.prompt and back.backbone.layers == smol.layers
    torch.testing.assert_close(back.encode(texts, convert_to="torch"), by_hand, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not held"):
        Encoder(smol, pooler, layers=5)
    with pytest.raises(ValueError, match="tokens must be"):
        Encoder(smol, pooler, tokens="txt")


def test_old_encoder_folder_loads_as_before(mini, tmp_path):
    from glotpool.encoder import Encoder
    from glotpool.pooling import build_pooler

    bb = single(mini, -1)
    enc = Encoder(bb, build_pooler("mean", in_dim=bb.dim))
    enc.save_pretrained(tmp_path / "m")
    cfg = tmp_path / "m" / "encoder.json"
    meta = json.loads(cfg.read_text())
    del meta["states"], meta["backbone"]["layers"], meta["backbone"]["prompt"]  # as saved before #20
    cfg.write_text(json.dumps(meta))
    back = Encoder.from_pretrained(tmp_path / "m", backbone=bb)
    assert back.layers is None and back.tokens == "all"
    torch.testing.assert_close(back.encode(TEXTS[:2], convert_to="torch"), enc.encode(TEXTS[:2], convert_to="torch"))


def test_cli_cache_prompt_and_layers(tmp_path, capsys):
    import argparse

    from glotpool.cli import cache as cli_cache
    from glotpool.cli._common import layers_arg

    assert layers_arg("all") == "all" and layers_arg("-1, -4,-8") == (-1, -4, -8)
    for bad in ("", "1,,2", "last", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
            layers_arg(bad)
    data = tmp_path / "d.csv"
    data.write_text("text\n" + "".join(f"{t.replace(',', ' ')}\n" for t in TEXTS[:3]))
    parser = argparse.ArgumentParser()
    cli_cache.register(parser.add_subparsers())
    args = parser.parse_args(["cache", "--data", str(data), "--out", str(tmp_path / "c"), "--prompt", "prompteol",
                              "--layers", "-1,2", "--max-length", "32", "--quiet"])
    assert args.func(args) == 0
    c = open_cache(tmp_path / "c")
    assert c.layers == (6, 2) and c.prompt.startswith("This sentence")
    assert "2 layers" in capsys.readouterr().err
