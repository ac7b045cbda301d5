"""Synthetic diagnostic stress test: find a (possibly negated) needle among random distractor words.

After Mantri et al., "Towards Improved Sentence Representations using Token Graphs" (ICLR 2026, Fig. 3), with the
published protocol's three shortcuts removed.

Sentence layout (words are lowercase, separated by single spaces, no punctuation; ``text.split()`` gives the words)::

    d_0 ... d_{p-1} | context(3) modifier(1) filler_1 ... filler_k noun(1) | d_p ... d_{n_d-1}
                      ^ needle_start                                   needle_end ^ (exclusive)

- ``n_d = int(length * ratio)`` distractor words, each drawn uniformly (with replacement) from the noise vocabulary.
  This is the paper's semantics: ``ratio`` fixes the number of distractors, not the realised fraction, so a sentence
  has ``words = n_d + needle_len`` words and its distractor fraction is ``n_d / words`` (< ratio for short ``length``).
- The needle is inserted at ``p`` ~ Uniform{0..n_d} (p = distractors before it); with a token budget, Uniform{0..p_max}
  where ``p_max`` is the largest p whose needle still ends within the first ``max_tokens`` tokens (see below).
- ``needle_len = 3 + 1 + k + 1`` with ``k`` ~ Uniform{filler_min..filler_max} filler words from the base noise vocab.
- label 1 (affirmative): modifier = NEUTRAL_MODIFIERS[m]; label 0 (negated): modifier = NEGATION_WORDS[m].

Paired construction (why the ONLY class difference is the negation word): examples come in twins (one positive, one
negative, same ``pair_id``) that share n_d, p, k, the context clause, the noun and the modifier slot m. With
``minimal_pairs=True`` (default) they also share every distractor and filler word, so the twin texts differ in exactly
one word: NEGATION_WORDS[m] vs NEUTRAL_MODIFIERS[m] (not/also, never/often, without/with, excluding/including, each a
word of the same kind and a single MiniLM word piece). Hence classes are exactly balanced, length-matched in words
(and, for word-piece tokenizers, in tokens), and any bag of words without the modifier words is identical within
each pair. With ``minimal_pairs=False`` the twin re-draws its distractors and fillers (same counts and positions).

Fixes of the published protocol:
1. Length shortcut (negatives were 11 words longer): twins have the same word count by construction.
2. Truncation (at r=0.9 the backbone could cut off the noun): pass ``max_tokens`` (and optionally ``count_tokens``,
   e.g. ``token_counter(tokenizer)``); the needle is then placed so that the prefix ``words[:needle_end]`` of BOTH
   twins counts <= max_tokens tokens, i.e. the whole needle survives truncation to ``max_tokens``. Without
   ``count_tokens`` the budget is in words (``max_words``). ``p_max`` is shared by the twins, so the needle position
   distribution is identical across classes.
3. Negation words among the noise (the published vocabulary had "not"): ``negation_in_noise=False`` (default) keeps
   every negation-like word (NEGATION_LIKE) out of the noise; ``True`` reproduces the flaw by adding all modifier words
   (negation and neutral, so the bare presence of either is no class signal) to the DISTRACTOR vocabulary only;
   fillers inside the needle never contain a modifier. The setting is recorded in the dataset metadata.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

from glotpool.io_utils import atomic_write_text, sha256_texts

FORMAT = "glotpool-stress/1"

# Negation modifiers (paper) and their neutral twins, index-aligned: same word kind, never negating.
NEGATION_WORDS: tuple[str, ...] = ("not", "never", "without", "excluding")
NEUTRAL_MODIFIERS: tuple[str, ...] = ("also", "often", "with", "including")
# Words that negate or restrict in English; none of them may occur as noise, filler, context or noun.
NEGATION_LIKE: frozenset[str] = frozenset(NEGATION_WORDS) | frozenset(
    "no nor none nothing nobody nowhere neither cannot cant dont doesnt isnt wasnt wont nt except lacking lacks lack "
    "minus absent missing hardly barely rarely seldom scarcely deny denies refuse fail fails".split()
)

# Needle parts: every context clause is 3 words ("the <thing> <verb>"), every noun 1 word.
CONTEXTS: tuple[str, ...] = (
    "the folder includes", "the report mentions", "the box contains", "the list shows",
    "the message lists", "the archive holds", "the page describes", "the catalog features",
)
NOUNS: tuple[str, ...] = (
    "reports", "files", "photos", "letters", "recipes", "invoices",
    "maps", "tickets", "receipts", "charts", "notes", "records",
)

# 141 common, neutral English words; disjoint from modifiers, NEGATION_LIKE, context and noun words (checked below).
NOISE_VOCAB: tuple[str, ...] = tuple("""
time people way day man thing woman life child world school state family student group country problem hand part
place case week company system program question work government number night point home water room mother area
money story fact month lot right study book eye job word business issue side kind head house service friend father
power hour game line end member law car city community name team minute idea body back parent face level office door
health person art history party result morning reason research girl moment air teacher education
good new first last long great little own old big high small large young early green blue red quiet open warm bright
go make know take see come think look want give use find tell ask seem feel try leave call run walk read write sit
stand bring keep hold
""".split())

_CONTEXT_WORDS = frozenset(w for c in CONTEXTS for w in c.split())


def _check_vocab() -> None:
    modifiers = set(NEGATION_WORDS) | set(NEUTRAL_MODIFIERS)
    assert len(NEGATION_WORDS) == len(NEUTRAL_MODIFIERS) and not set(NEUTRAL_MODIFIERS) & NEGATION_LIKE
    assert len(set(NOISE_VOCAB)) == len(NOISE_VOCAB), "duplicate noise word"
    for name, words in (("noise", set(NOISE_VOCAB)), ("context", _CONTEXT_WORDS), ("noun", set(NOUNS))):
        bad = words & (modifiers | NEGATION_LIKE)
        assert not bad, f"{name} words overlap modifiers/negation: {sorted(bad)}"
    assert not set(NOISE_VOCAB) & (_CONTEXT_WORDS | set(NOUNS)) and not _CONTEXT_WORDS & set(NOUNS)
    assert all(len(c.split()) == 3 for c in CONTEXTS)


_check_vocab()


@dataclass
class StressConfig:
    """One stress-test dataset. ``ratio`` and ``length`` give ``int(length * ratio)`` distractors per sentence."""

    ratio: float = 0.9
    length: int = 128                      # L: nominal sentence length the ratio refers to
    n_train: int = 2000                    # even: half positive, half negative (twins)
    n_eval: int = 500
    seed: int = 0
    negation_in_noise: bool = False        # True reproduces the published flaw (modifier words among distractors)
    minimal_pairs: bool = True             # twins share distractors and fillers -> differ in one word only
    filler_min: int = 8                    # k ~ Uniform{filler_min..filler_max} filler words inside the needle
    filler_max: int = 12
    noise_vocab_size: int = len(NOISE_VOCAB)  # use the first N words of NOISE_VOCAB (<= 141)

    def validate(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")
        if self.length < 1:
            raise ValueError(f"length must be >= 1 word, got {self.length}")
        for name in ("n_train", "n_eval"):
            n = getattr(self, name)
            if n < 0 or n % 2:
                raise ValueError(f"{name} must be an even number >= 0 (balanced twins), got {n}")
        if not 0 <= self.filler_min <= self.filler_max:
            raise ValueError(f"need 0 <= filler_min <= filler_max, got {self.filler_min}, {self.filler_max}")
        if not 1 <= self.noise_vocab_size <= len(NOISE_VOCAB):
            raise ValueError(f"noise_vocab_size must be in [1, {len(NOISE_VOCAB)}], got {self.noise_vocab_size}")

    @property
    def n_distractors(self) -> int:
        return int(self.length * self.ratio)


@dataclass
class StressExample:
    text: str
    label: int            # 1 = affirmative needle (neutral modifier), 0 = negated needle
    needle_start: int     # word index of the needle's first word (context clause)
    needle_end: int       # word index one past the noun
    words: int            # total word count = n_distractors + needle length
    pair_id: int          # twin (opposite label, same length and needle position) shares this id


class StressData(dict):
    """``{"train": [StressExample], "eval": [...]}`` plus ``.meta`` (config, vocab fingerprints, token budget)."""

    def __init__(self, splits: dict[str, list[StressExample]], meta: dict | None = None):
        super().__init__(splits)
        self.meta = dict(meta or {})


def token_counter(tokenizer, add_special_tokens: bool = True) -> Callable[[str], int]:
    """``count_tokens`` for a Hugging Face tokenizer; counting special tokens ([CLS], [SEP]) keeps the budget safe."""

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    count_tokens.__qualname__ = f"token_counter({type(tokenizer).__name__}, special={add_special_tokens})"
    return count_tokens


def _count_words(text: str) -> int:
    return len(text.split())


def _split_seed(seed: int, split: str) -> int:
    """Independent, platform-stable seed per split (hash() is salted per process; sha256 is not)."""
    return int.from_bytes(hashlib.sha256(f"glotpool-stress:{seed}:{split}".encode()).digest()[:8], "little")


def _vocabs(cfg: StressConfig) -> tuple[list[str], list[str]]:
    """(distractor vocab, filler vocab). Fillers never contain a modifier, whatever ``negation_in_noise`` says."""
    base = list(NOISE_VOCAB[: cfg.noise_vocab_size])
    extra = list(NEGATION_WORDS) + list(NEUTRAL_MODIFIERS) if cfg.negation_in_noise else []
    return base + extra, base


def _max_position(prefixes: Callable[[int], list[str]], n_d: int, count: Callable[[str], int], budget: int) -> int:
    """Largest p in [0, n_d] with count(prefix(p)) <= budget for every twin prefix; token counts grow with p."""

    def fits(p: int) -> bool:
        return all(count(" ".join(words)) <= budget for words in prefixes(p))

    if not fits(0):
        need = max(count(" ".join(w)) for w in prefixes(0))
        raise ValueError(
            f"the needle alone needs {need} tokens but max_tokens={budget}; raise max_tokens or lower filler_max"
        )
    if fits(n_d):  # common case: the whole sentence fits -> one check
        return n_d
    lo, hi = 0, n_d  # invariant: fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def make_stress_split(
    cfg: StressConfig,
    n: int,
    seed: int,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> list[StressExample]:
    """``n`` examples (n/2 twin pairs, shuffled), reproducible from ``seed``.

    max_tokens: keep the whole needle within the first ``max_tokens`` tokens as counted by ``count_tokens(text)``
        (default: whitespace words, i.e. a max_words budget). None: no budget.
    """
    cfg.validate()
    if n < 0 or n % 2:
        raise ValueError(f"n must be an even number >= 0 (one positive + one negative per pair), got {n}")
    if count_tokens is not None and max_tokens is None:
        raise ValueError("count_tokens given without max_tokens; pass max_tokens (e.g. 256 for MiniLM)")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    count = count_tokens or _count_words
    rng = random.Random(seed)
    noise, filler_vocab = _vocabs(cfg)
    n_d = cfg.n_distractors
    out: list[StressExample] = []
    for pair_id in range(n // 2):
        context = rng.choice(CONTEXTS).split()
        noun = rng.choice(NOUNS)
        m = rng.randrange(len(NEGATION_WORDS))
        k = rng.randint(cfg.filler_min, cfg.filler_max)
        # per twin: (distractors, fillers); index 0 = positive, 1 = negative
        parts = [(rng.choices(noise, k=n_d), rng.choices(filler_vocab, k=k))]
        parts.append(parts[0] if cfg.minimal_pairs else (rng.choices(noise, k=n_d), rng.choices(filler_vocab, k=k)))
        needles = [
            context + [modifier] + fill + [noun]
            for modifier, (_, fill) in zip((NEUTRAL_MODIFIERS[m], NEGATION_WORDS[m]), parts)
        ]
        p_max = n_d
        if max_tokens is not None:
            p_max = _max_position(
                lambda p: [d[:p] + nd for (d, _), nd in zip(parts, needles)], n_d, count, max_tokens
            )
        p = rng.randint(0, p_max)
        for label, (dist, _), needle in zip((1, 0), parts, needles):
            words = dist[:p] + needle + dist[p:]
            out.append(StressExample(" ".join(words), label, p, p + len(needle), len(words), pair_id))
    rng.shuffle(out)
    return out


def make_stress_data(
    cfg: StressConfig,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
) -> StressData:
    """``{"train": cfg.n_train examples, "eval": cfg.n_eval}``, balanced, seeded by ``cfg.seed`` (splits independent).

    ``max_tokens``/``count_tokens`` as in :func:`make_stress_split`; ``.meta`` records them, the config (including
    ``negation_in_noise``), vocab/text fingerprints and, with a budget, ``n_over_budget`` (texts to be truncated).
    """
    cfg.validate()
    splits = {
        split: make_stress_split(cfg, n, _split_seed(cfg.seed, split), max_tokens, count_tokens)
        for split, n in (("train", cfg.n_train), ("eval", cfg.n_eval))
    }
    noise, _ = _vocabs(cfg)
    meta = {
        "format": FORMAT,
        "config": asdict(cfg),
        "negation_in_noise": cfg.negation_in_noise,
        "n_distractors": cfg.n_distractors,
        "ratio_semantics": "n_distractors = int(length * ratio); words = n_distractors + needle length",
        "max_tokens": max_tokens,
        "count_tokens": None if max_tokens is None else getattr(count_tokens, "__qualname__", "words"),
        "negation_words": list(NEGATION_WORDS),
        "neutral_modifiers": list(NEUTRAL_MODIFIERS),
        "noise_vocab_sha256": sha256_texts(noise),
        "text_sha256": {s: sha256_texts(e.text for e in ex) for s, ex in splits.items()},
    }
    if max_tokens is not None:  # texts the backbone will truncate (their needles are intact by construction)
        count = count_tokens or _count_words
        meta["n_over_budget"] = {s: sum(count(e.text) > max_tokens for e in ex) for s, ex in splits.items()}
    return StressData(splits, meta)


def save_stress_data(data: dict[str, list[StressExample]], path: str | Path) -> None:
    """Atomic JSONL: line 1 = {"format", "meta", "counts"}; then one {"split", **example} per line."""
    meta = getattr(data, "meta", {})
    lines = [json.dumps({"format": FORMAT, "meta": meta, "counts": {s: len(ex) for s, ex in data.items()}},
                        sort_keys=True)]
    for split, examples in data.items():
        lines += [json.dumps({"split": split, **asdict(e)}, sort_keys=True) for e in examples]
    atomic_write_text(path, "\n".join(lines) + "\n")


def load_stress_data(path: str | Path) -> StressData:
    """Inverse of :func:`save_stress_data`; checks the header, every row's fields and the per-split counts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no stress data at {path}; create it with make_stress_data + save_stress_data")
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line 1 is not JSON ({e}); expected a {FORMAT} header") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (bad or missing header line); regenerate it")
    names = [f.name for f in fields(StressExample)]
    splits: dict[str, list[StressExample]] = {s: [] for s in header.get("counts", {})}
    for i, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
            splits.setdefault(row.pop("split"), []).append(StressExample(**{k: row.pop(k) for k in names}))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: line {i} is not a stress example ({e!r}); regenerate the file") from e
        if row:
            raise ValueError(f"{path}: line {i} has unknown fields {sorted(row)}; regenerate the file")
    counts = {s: len(ex) for s, ex in splits.items()}
    if counts != header.get("counts"):
        raise ValueError(f"{path}: counts {counts} != header {header.get('counts')} (truncated file?); regenerate it")
    return StressData(splits, header.get("meta", {}))


__all__: Sequence[str] = [
    "CONTEXTS", "NEGATION_LIKE", "NEGATION_WORDS", "NEUTRAL_MODIFIERS", "NOISE_VOCAB", "NOUNS",
    "StressConfig", "StressData", "StressExample", "load_stress_data", "make_stress_data", "make_stress_split",
    "save_stress_data", "token_counter",
]


def stress_splits(data: dict[str, list[StressExample]], dev_fraction: float, seed: int) -> dict:
    """``{"train", "dev", "test"}`` TextDatasets from stress data: dev carved from train by twin pair (both twins of
    a pair - they differ in one word - stay on the same side), test = the eval split."""
    import numpy as np

    from glotpool.data.datasets import TextDataset

    pairs = sorted({e.pair_id for e in data["train"]})
    rng = np.random.default_rng(seed)
    dev_pairs = set(rng.permutation(pairs)[:int(round(len(pairs) * dev_fraction))].tolist())
    as_ds = lambda exs: TextDataset(texts=[e.text for e in exs], labels=[int(e.label) for e in exs])  # noqa: E731
    return {"train": as_ds([e for e in data["train"] if e.pair_id not in dev_pairs]),
            "dev": as_ds([e for e in data["train"] if e.pair_id in dev_pairs]),
            "test": as_ds(data["eval"])}
