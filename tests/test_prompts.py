"""Prompt templates: filling and spans, validation, and the text mask on the real MiniLM and SmolLM2 tokenizers."""
import copy
import dataclasses
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from glotpool.states.backbone import BackboneConfig, iter_encoded, load_backbone
from glotpool.states.prompts import PROMPTS, fill_prompt, resolve_prompt

TEXTS = ["The cat sat on the mat.", "dull , {braces} and {text} too", "a fine film"]


def variant(bb, padding_side=None, **config):
    """The same frozen model with another config (prompt, layer, ...) and its own tokenizer copy."""
    tok = copy.deepcopy(bb.tokenizer)
    if padding_side:
        tok.padding_side = padding_side
    return dataclasses.replace(bb, config=dataclasses.replace(bb.config, **config), tokenizer=tok, _fingerprint=None)


def norm(s: str) -> str:
    """Case- and whitespace-free form: BERT lower-cases and decodes '{b}' as '{ b }'."""
    return "".join(s.lower().split())


@pytest.fixture(scope="module")
def backbones(glotpool_home):
    return {"minilm": load_backbone("minilm", max_length=64), "smollm2": load_backbone("smollm2", max_length=64)}


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_fill_prompt_span_is_the_last_copy(name):
    tmpl = resolve_prompt(name)
    for text in TEXTS:
        out, (a, b) = fill_prompt(tmpl, text)
        assert out[a:b] == text
        assert out == tmpl.replace("{text}", text)  # plain replacement: braces in the text stay as they are
    out, (a, b) = fill_prompt(PROMPTS["echo"], "x y")
    assert out == "Rewrite the sentence: x y\nRewritten sentence: x y" and (a, b) == (len(out) - 3, len(out))


def test_resolve_prompt():
    assert resolve_prompt(None) is None and resolve_prompt("") is None
    assert resolve_prompt("echo") == PROMPTS["echo"]
    assert resolve_prompt("Query: {text}") == "Query: {text}"
    for bad in ("Query:", "nonsense", "{text} {text} {text}", "{ text }"):
        with pytest.raises(ValueError, match=r"prompteol.*\{text\}"):
            resolve_prompt(bad)
    with pytest.raises(ValueError, match="template"):
        BackboneConfig(prompt="no slot here")
    assert BackboneConfig(prompt="prompteol").prompt == PROMPTS["prompteol"]  # resolved in the config


@pytest.mark.parametrize("name", ["minilm", "smollm2"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_text_mask_decodes_to_the_text(backbones, name, side, prompt):
    bb = variant(backbones[name], padding_side=side, prompt=prompt)
    batch = bb.tokenize(TEXTS)  # padded, as forward_batch takes it
    mask, text_mask = batch["attention_mask"].bool(), batch["text_mask"].bool()
    assert text_mask.shape == mask.shape and not (text_mask & ~mask).any()  # text tokens are real tokens
    assert (mask[:, 0] if side == "right" else mask[:, -1]).all()  # padded on the asked side
    for r, text in enumerate(TEXTS):
        ids = batch["input_ids"][r]
        on = text_mask[r].nonzero().flatten()
        assert (on == torch.arange(on[0], on[-1] + 1)).all()  # one contiguous run
        got = norm(bb.tokenizer.decode(ids[on]))
        # SmolLM2 merges the text's final '.' with the prompt's closing quote into one token '."'
        assert got in (norm(text), norm(text) + '"'), (got, text)
        first = int(on[0])
        before = norm(bb.tokenizer.decode(ids[:first][mask[r, :first]]))  # the real tokens before the text
        # echo: the pooled copy is the second one, so the text appears once before it
        assert before.count(norm(text).rstrip(".")) == (1 if prompt == "echo" else 0)


def test_iter_encoded_yields_the_text_mask_aligned_with_h(backbones):
    bb = variant(backbones["smollm2"], padding_side="left", prompt="echo")
    enc = bb.tokenize(TEXTS, padding=False, return_tensors=None)
    seen = []
    for idx, h, mask, text_mask in iter_encoded(bb, TEXTS, batch_size=2, encoding=enc, with_text_mask=True):
        want = bb.pad([{k: enc[k][i] for k in enc} for i in idx])["text_mask"].bool()
        assert text_mask.dtype == torch.bool and torch.equal(text_mask, want) and h.shape[:2] == mask.shape
        assert not mask[:, 0].all() or mask.all()  # left padding: padding sits at the start
        seen += idx
    assert sorted(seen) == [0, 1, 2]


def test_no_prompt_text_mask_is_the_attention_mask(backbones):
    for _, h, mask, text_mask in iter_encoded(backbones["smollm2"], TEXTS, with_text_mask=True):
        assert torch.equal(text_mask, mask.bool())
    for _, h, mask in iter_encoded(backbones["minilm"], TEXTS):  # default: today's 3-tuple
        assert h.shape[:2] == mask.shape


def test_prompt_rejects_pairs_and_keeps_the_prompt_whole_when_truncating(backbones):
    bb = variant(backbones["smollm2"], prompt="prompteol", max_length=16)
    with pytest.raises(ValueError, match="separate texts"):
        bb.tokenize([("a", "b")])
    long = "the film goes on and on " * 10 + "and ends"
    enc = bb.tokenize([long, "short text"], padding=False, return_tensors=None)
    assert all(len(x) <= 16 for x in enc["input_ids"]) and len(enc["input_ids"][0]) > 12
    last = bb.tokenizer.decode(enc["input_ids"][0][-5:])
    assert last.endswith('means in one word:"')  # the text was shortened inside the prompt, not the prompt cut
    text = bb.tokenizer.decode([t for t, m in zip(enc["input_ids"][0], enc["text_mask"][0]) if m])
    assert long.startswith(text.strip()) and 0 < len(text.strip()) < len(long)
    full = bb.tokenize([long], padding=False, return_tensors=None, truncation=False)
    assert len(full["input_ids"][0]) > 16  # truncation=False measures the whole prompted text
    with pytest.raises(ValueError, match="does not fit"):
        variant(bb, max_length=8).tokenize([long])
