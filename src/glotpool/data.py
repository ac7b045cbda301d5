"""Text datasets: table readers, seeded splits, label encoding and task presets (GLUE + offline corpora).

A split is a :class:`TextDataset` - parallel python lists, nothing framework specific::

    texts   [N] str             first (or only) sentence
    texts2  [N] str | None      second sentence of pair tasks (NLI, paraphrase, STS)
    labels  [N] str|int|float   class labels as read (str/int) or float scores (STS) | None
    groups  [N] hashable | None items sharing a group (e.g. an SNLI premise) never straddle two splits

Everything that reads input validates it and raises ``ValueError`` naming the file, the rows and the fix; rows are
never dropped silently. Row numbers in messages are 1-based data rows (the header row is not counted).
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .fetch import default_data_dir

TASK_TYPES = ("single", "pair", "sts", "retrieval")
_MAX_ROWS_SHOWN = 10


def _rows_str(rows: Sequence[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:_MAX_ROWS_SHOWN])
    return shown + (f", ... ({len(rows) - _MAX_ROWS_SHOWN} more)" if len(rows) > _MAX_ROWS_SHOWN else "")


# ----------------------------------------------------------------------------------------------- dataset


@dataclass
class TextDataset:
    """One split: parallel lists of texts (and second texts, labels, groups). See the module docstring."""

    texts: list[str]
    texts2: list[str] | None = None
    labels: list | None = None
    groups: list | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        for name in ("texts2", "labels", "groups"):
            col = getattr(self, name)
            if col is not None and len(col) != n:
                raise ValueError(f"TextDataset: {name} has {len(col)} items but texts has {n}; they must be parallel")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def is_pair(self) -> bool:
        return self.texts2 is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> "TextDataset":
        """New dataset with the rows ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        pick = lambda col: None if col is None else [col[i] for i in idx]  # noqa: E731
        return TextDataset(pick(self.texts), pick(self.texts2), pick(self.labels), pick(self.groups))


def _is_regression(labels: Sequence | None) -> bool:
    """Float labels with a non-integral value (STS scores) -> regression; such labels are never stratified."""
    return labels is not None and any(isinstance(v, float) and not float(v).is_integer() for v in labels)


# ----------------------------------------------------------------------------------------------- readers


def _columns_to_dataset(
    cols: Mapping[str, Sequence],
    n: int,
    *,
    source: str,
    text_col: str,
    text_col_2: str | None = None,
    label_col: str | None = None,
    score_col: str | None = None,
    group_col: str | None = None,
    label_names: Sequence[str] | None = None,
) -> TextDataset:
    """Validate + convert column lists (missing cells are ``None``) into a TextDataset. Shared by every reader."""
    if label_col is not None and score_col is not None:
        raise ValueError("give label_col (classification) or score_col (regression), not both")
    wanted = [c for c in (text_col, text_col_2, label_col, score_col, group_col) if c is not None]
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise ValueError(f"{source}: column(s) {missing} not found; the columns are {list(cols)}")
    if n == 0:
        raise ValueError(f"{source}: no data rows")

    def texts_of(col: str) -> list[str]:
        vals = [("" if v is None else str(v)).strip() for v in cols[col]]
        empty = [i + 1 for i, v in enumerate(vals) if not v]
        if empty:
            raise ValueError(f"{source}: empty text in column {col!r} at row(s) {_rows_str(empty)}; "
                             "fix or remove those rows")
        return vals

    texts = texts_of(text_col)
    texts2 = texts_of(text_col_2) if text_col_2 is not None else None
    labels = None
    if label_col is not None:
        raw = [v.strip() if isinstance(v, str) else v for v in cols[label_col]]
        bad = [i + 1 for i, v in enumerate(raw) if v is None or v == ""]
        if bad:
            raise ValueError(f"{source}: missing label in column {label_col!r} at row(s) {_rows_str(bad)}")
        if label_names is not None:  # integer class ids (HF ClassLabel) -> names; -1 = hidden label
            k = len(label_names)
            bad = [i + 1 for i, v in enumerate(raw) if not (isinstance(v, (int, np.integer)) and 0 <= v < k)]
            if bad:
                raise ValueError(f"{source}: label(s) outside 0..{k - 1} at row(s) {_rows_str(bad)} (e.g. "
                                 f"{raw[bad[0] - 1]!r}); -1 means the labels of this split are hidden (GLUE test)")
            raw = [label_names[int(v)] for v in raw]
        labels = raw
    elif score_col is not None:
        labels, bad = [], []
        for i, v in enumerate(cols[score_col]):
            try:
                f = float(v.strip() if isinstance(v, str) else v)
                if not math.isfinite(f):
                    raise ValueError
            except (TypeError, ValueError):
                bad.append(i + 1)
                f = float("nan")
            labels.append(f)
        if bad:
            raise ValueError(f"{source}: score column {score_col!r} is not a finite number at row(s) {_rows_str(bad)}"
                             f" (e.g. {cols[score_col][bad[0] - 1]!r})")
    groups = list(cols[group_col]) if group_col is not None else None
    return TextDataset(texts, texts2, labels, groups)


def _read_delimited(path: Path, delimiter: str, encoding: str, has_header: bool,
                    column_names: Sequence[str] | None, quoting: int) -> tuple[dict[str, list], int]:
    with open(path, encoding=encoding, newline="") as f:  # newline="": quoted cells may hold embedded newlines
        rows = [r for r in csv.reader(f, delimiter=delimiter, quoting=quoting) if r]  # [] = blank line
    if not rows and (has_header and column_names is None):
        raise ValueError(f"{path}: file is empty (no header row)")
    header = rows[0] if has_header and rows else None
    body = rows[1:] if has_header else rows
    if column_names is not None:
        names = list(column_names)
    elif header is not None:
        names = [h.strip() for h in header]
    else:
        names = [str(i) for i in range(max((len(r) for r in body), default=0))]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate column names {names}")
    ragged = [i + 1 for i, r in enumerate(body) if len(r) != len(names)]
    if ragged:
        raise ValueError(f"{path}: row(s) {_rows_str(ragged)} have a different number of fields than the "
                         f"{len(names)} columns {names} (first bad row has {len(body[ragged[0] - 1])}); check the "
                         "delimiter and quoting")
    cols = {name: [r[j] for r in body] for j, name in enumerate(names)}
    return cols, len(body)


def _read_jsonl(path: Path, encoding: str) -> tuple[dict[str, list], int]:
    with open(path, encoding=encoding) as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"{path}: file is empty")
    if text.lstrip().startswith("["):  # a .json file holding one array of objects
        records = json.loads(text)
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {lineno} is not valid JSON ({e})") from None
    bad = [i + 1 for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        raise ValueError(f"{path}: row(s) {_rows_str(bad)} are not JSON objects")
    names: dict[str, None] = {}
    for r in records:  # union of keys, in first-seen order
        names.update(dict.fromkeys(r))
    return {k: [r.get(k) for r in records] for k in names}, len(records)


def read_table(
    path: str | os.PathLike,
    *,
    text_col: str = "text",
    text_col_2: str | None = None,
    label_col: str | None = None,
    score_col: str | None = None,
    group_col: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
    quoting: int | None = None,
) -> TextDataset:
    """Read a CSV / TSV / JSONL file into a :class:`TextDataset`.

    The format follows the extension: ``.csv`` (``,``), ``.tsv``/``.tab`` (tab; no quoting by default, like GLUE's
    TSVs - pass ``quoting=csv.QUOTE_MINIMAL`` for quoted TSV), ``.jsonl``/``.json`` (one object per line, or one JSON
    array); any other extension needs ``delimiter``. Headerless files (e.g. Pattern's Pang & Lee CSVs: ``label,text``)
    take ``has_header=False, column_names=["label", "text"]``; without names the columns are ``"0", "1", ...``.
    ``column_names`` with ``has_header=True`` renames the header. Texts are stripped; labels are kept as read
    (strings for CSV/TSV), ``score_col`` is parsed as float.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty file; a missing column (the message lists the columns that exist); empty texts, missing
            labels, bad scores or ragged rows (the message names the rows).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    ext = path.suffix.lower()
    if ext in (".jsonl", ".json", ".ndjson"):
        enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
        cols, n = _read_jsonl(path, enc)
    else:
        if delimiter is None:
            delimiter = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(ext)
            if delimiter is None:
                raise ValueError(f"{path}: unknown extension {ext!r}; use .csv/.tsv/.jsonl or pass delimiter=")
        if quoting is None:
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        cols, n = _read_delimited(path, delimiter, encoding, has_header, column_names, quoting)
    return _columns_to_dataset(cols, n, source=str(path), text_col=text_col, text_col_2=text_col_2,
                               label_col=label_col, score_col=score_col, group_col=group_col)


@dataclass
class DataSpec:
    """Where a split lives and which columns to read (a config-friendly form of :func:`read_table`'s arguments)."""

    path: str
    text_col: str = "text"
    text_col_2: str | None = None
    label_col: str | None = None
    score_col: str | None = None
    group_col: str | None = None
    delimiter: str | None = None
    encoding: str = "utf-8-sig"
    has_header: bool = True
    column_names: list[str] | None = None

    def read(self) -> TextDataset:
        kw = {k: v for k, v in self.__dict__.items() if k != "path"}
        return read_table(self.path, **kw)


# ----------------------------------------------------------------------------------------------- splits


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be 3 non-negative numbers summing to 1 (train, dev, test), got {tuple(ratios)}")
    return tuple(float(r) for r in ratios)  # type: ignore[return-value]


def _cut(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Boundaries [0, b1) train, [b1, b2) dev, [b2, n) test for n items (rounded cumulative ratios)."""
    b1 = int(round(n * ratios[0]))
    b2 = int(round(n * (ratios[0] + ratios[1])))
    return b1, max(b1, min(b2, n))


def _split_indices(ds: TextDataset, ratios: Sequence[float], seed: int, stratify: bool,
                   use_groups: bool = True) -> list[np.ndarray]:
    r = _check_ratios(ratios)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    if use_groups and ds.groups is not None:
        uniq = list(dict.fromkeys(ds.groups))
        order = rng.permutation(len(uniq))
        b1, b2 = _cut(len(uniq), r)
        where = {uniq[gi]: (0 if pos < b1 else 1 if pos < b2 else 2) for pos, gi in enumerate(order)}
        for i, g in enumerate(ds.groups):
            parts[where[g]].append(i)
    else:
        if stratify and ds.labels is not None and not _is_regression(ds.labels):
            buckets: dict[Any, list[int]] = {}
            for i, y in enumerate(ds.labels):
                buckets.setdefault(y, []).append(i)
            strata = [buckets[k] for k in sorted(buckets, key=str)]  # fixed order -> reproducible
        else:
            strata = [list(range(len(ds)))]
        for idx in strata:
            perm = [idx[j] for j in rng.permutation(len(idx))]
            b1, b2 = _cut(len(perm), r)
            parts[0] += perm[:b1]
            parts[1] += perm[b1:b2]
            parts[2] += perm[b2:]
    # shuffle inside each split so class-sorted inputs (Pang & Lee) come out mixed
    return [np.asarray(p, dtype=np.int64)[rng.permutation(len(p))] for p in parts]


def split_dataset(
    ds: TextDataset,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: bool = True,
) -> tuple[TextDataset, TextDataset, TextDataset]:
    """Seeded split into (train, dev, test); a ratio may be 0 (that split is then empty).

    * ``ds.groups`` set: whole groups are assigned (shuffled groups cut by ``ratios``), so no group straddles two
      splits (SNLI: no premise in both train and dev); sizes follow the ratios only approximately.
    * else, with ``stratify`` and class labels: each class is shuffled and cut by ``ratios`` separately, so every
      split keeps the label distribution (+-1 item per class).
    * else: one shuffled cut.

    Rows inside each split come in a seeded random order. Same ``ds`` + ``seed`` -> same splits.
    """
    tr, dv, te = (ds.subset(p) for p in _split_indices(ds, ratios, seed, stratify))
    return tr, dv, te


def subsample(ds: TextDataset, n: int, seed: int = 0, stratify: bool = True) -> TextDataset:
    """Seeded subset of exactly ``n`` rows (``ds`` itself when ``n >= len(ds)``), in random order.

    With ``stratify`` and class labels each class keeps its share (largest-remainder rounding, so sizes add up to n).
    """
    if n <= 0:
        raise ValueError(f"subsample size must be positive, got {n}")
    if n >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    if not (stratify and ds.labels is not None and not _is_regression(ds.labels)):
        return ds.subset(np.sort(rng.permutation(len(ds))[:n])[rng.permutation(n)])
    buckets: dict[Any, list[int]] = {}
    for i, y in enumerate(ds.labels):
        buckets.setdefault(y, []).append(i)
    keys = sorted(buckets, key=str)
    exact = np.array([n * len(buckets[k]) / len(ds) for k in keys])
    quota = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]:
        quota[j] += 1
    keep = []
    for k, q in zip(keys, quota):
        idx = buckets[k]
        keep += [idx[j] for j in rng.permutation(len(idx))[:q]]
    return ds.subset(np.asarray(keep)[rng.permutation(len(keep))])


def load_splits(
    train: str | os.PathLike | None = None,
    dev: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    single: str | os.PathLike | None = None,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    dev_fraction: float = 0.1,
    stratify: bool = True,
    **read_kwargs: Any,
) -> dict[str, TextDataset]:
    """Read ``{"train", "dev", "test"}`` splits from files (every file read with ``read_kwargs``).

    Accepted combinations: ``single`` (one file, split by ``ratios`` with ``seed``); ``train + dev + test``;
    ``train + test`` (dev = a seeded, stratified ``dev_fraction`` of train).
    """
    if single is not None:
        if any(p is not None for p in (train, dev, test)):
            raise ValueError("give either single= (one file to split) or train=/dev=/test= files, not both")
        tr, dv, te = split_dataset(read_table(single, **read_kwargs), ratios, seed=seed, stratify=stratify)
        return {"train": tr, "dev": dv, "test": te}
    if train is None or test is None:
        raise ValueError("need train= and test= files (dev= optional: carved from train), or single= to split one "
                         f"file; got train={train}, dev={dev}, test={test}")
    out = {"train": read_table(train, **read_kwargs), "test": read_table(test, **read_kwargs)}
    if dev is not None:
        out["dev"] = read_table(dev, **read_kwargs)
    else:
        if not 0.0 < dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
        out["train"], out["dev"], _ = split_dataset(out["train"], (1 - dev_fraction, dev_fraction, 0.0), seed=seed,
                                                    stratify=stratify)
    return {k: out[k] for k in ("train", "dev", "test")}


# ----------------------------------------------------------------------------------------------- labels


def encode_labels(
    train_labels: Sequence,
    *others: Sequence,
    names: Sequence | None = None,
    split_names: Sequence[str] | None = None,
) -> tuple[list[str], list[np.ndarray]]:
    """Map class labels to ids ``0..K-1``.

    Args:
        train_labels: labels of the training split; they define the classes unless ``names`` is given.
        others: labels of further splits (dev, test, ...), encoded with the same mapping.
        names: fixed class order (e.g. a preset's ``label_names``, so binary "positive" is id 1); every label must
            be one of them. Default: the sorted distinct train labels (numbers numerically, else as strings).
        split_names: names of ``others`` used in errors (default ``dev``, ``test``, ``split3``, ...).

    Returns:
        (class names as str, [int64 array [N_split] for train, *others]).

    Raises:
        ValueError: a label in another split that train never saw (naming the labels and the split), float scores.
    """
    if _is_regression(train_labels):
        raise ValueError("labels look like regression scores (non-integer floats); use task type 'sts'")
    if names is None:
        uniq = set(train_labels)
        if all(isinstance(v, (int, float, np.integer, np.floating)) for v in uniq):
            classes = sorted(uniq)
        else:
            classes = sorted(uniq, key=str)
    else:
        classes = list(names)
        if len(set(classes)) != len(classes):
            raise ValueError(f"duplicate class names {classes}")
    if split_names is None:
        split_names = [("dev", "test")[i] if i < 2 else f"split{i + 1}" for i in range(len(others))]
    index = {c: i for i, c in enumerate(classes)}
    arrays = []
    for split, labels in zip(["train", *split_names], [train_labels, *others]):
        unseen = sorted({y for y in labels if y not in index}, key=str)
        if unseen:
            where = "the given class names" if names is not None or split == "train" else "train"
            raise ValueError(f"{split} split has label(s) {unseen} that {where} never saw (classes: "
                             f"{[str(c) for c in classes]}); fix the labels or the split")
        arrays.append(np.fromiter((index[y] for y in labels), dtype=np.int64, count=len(labels)))
    return [str(c) for c in classes], arrays


# ----------------------------------------------------------------------------------------------- presets


@dataclass
class TaskPreset:
    """How to load a named task and how to score it.

    ``splits`` maps our split names to the source's (``{"train": "train", "test": "validation"}``); a missing
    ``dev`` is carved from train (seeded, stratified; ``dev_fraction`` capped at ``dev_max``).
    """

    name: str
    task_type: str  # "single" | "pair" | "sts" | "retrieval"
    metric: str  # main metric (model selection / headline): a key of metrics.compute_metrics' dict
    metrics: tuple[str, ...] = ()  # everything worth reporting
    num_labels: int = 0  # 0 for sts / retrieval
    label_names: tuple[str, ...] | None = None  # class order: id i = label_names[i]
    hf_path: str | None = None
    hf_name: str | None = None
    text_col: str = "sentence"
    text_col_2: str | None = None
    label_col: str | None = "label"
    score_col: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "validation"})
    dev_fraction: float = 0.1
    dev_max: int = 5000
    score_range: tuple[float, float] | None = None  # sts: (min, max) of gold scores
    description: str = ""


def _glue(name, text_col, text_col_2, label_names, metric, metrics, test_split="validation", desc=""):
    return TaskPreset(name=name, task_type="pair" if text_col_2 else "single", metric=metric, metrics=metrics,
                      num_labels=len(label_names), label_names=tuple(label_names), hf_path="nyu-mll/glue",
                      hf_name=name, text_col=text_col, text_col_2=text_col_2,
                      splits={"train": "train", "test": test_split}, description=desc)


_CLS = ("accuracy", "macro_f1", "mcc")
PRESETS: dict[str, TaskPreset] = {
    "cola": _glue("cola", "sentence", None, ["unacceptable", "acceptable"], "mcc", _CLS,
                  desc="GLUE CoLA: grammatical acceptability"),
    "sst2": _glue("sst2", "sentence", None, ["negative", "positive"], "accuracy", _CLS + ("f1",),
                  desc="GLUE SST-2: binary sentiment"),
    "mrpc": _glue("mrpc", "sentence1", "sentence2", ["not_equivalent", "equivalent"], "f1", ("f1",) + _CLS,
                  desc="GLUE MRPC: paraphrase"),
    "qqp": _glue("qqp", "question1", "question2", ["not_duplicate", "duplicate"], "f1", ("f1",) + _CLS,
                 desc="GLUE QQP: duplicate questions"),
    "mnli": _glue("mnli", "premise", "hypothesis", ["entailment", "neutral", "contradiction"], "accuracy", _CLS,
                  test_split="validation_matched", desc="GLUE MNLI: NLI, tested on validation_matched"),
    "qnli": _glue("qnli", "question", "sentence", ["entailment", "not_entailment"], "accuracy", _CLS,
                  desc="GLUE QNLI: question-answer entailment"),
    "rte": _glue("rte", "sentence1", "sentence2", ["entailment", "not_entailment"], "accuracy", _CLS,
                 desc="GLUE RTE: entailment"),
    "wnli": _glue("wnli", "sentence1", "sentence2", ["not_entailment", "entailment"], "accuracy", _CLS,
                  desc="GLUE WNLI: Winograd NLI"),
    "stsb": TaskPreset(name="stsb", task_type="sts", metric="spearman", metrics=("spearman", "pearson"),
                       hf_path="nyu-mll/glue", hf_name="stsb", text_col="sentence1", text_col_2="sentence2",
                       label_col=None, score_col="label", score_range=(0.0, 5.0),
                       description="GLUE STS-B: similarity scores 0-5"),
    # Offline presets: files written by scripts/fetch_data.py (glotpool.fetch) under the data dir.
    "pang-lee": TaskPreset(name="pang-lee", task_type="single", metric="accuracy", metrics=_CLS + ("f1",),
                           num_labels=2, label_names=("negative", "positive"), text_col="text",
                           splits={}, description="Pang & Lee movie-review sentences (4000, balanced), split "
                           "80/10/10 seeded+stratified from DATA_DIR/pang-lee/sentences.csv"),
    "snli": TaskPreset(name="snli", task_type="pair", metric="accuracy", metrics=_CLS, num_labels=3,
                       label_names=("entailment", "neutral", "contradiction"), text_col="premise",
                       text_col_2="hypothesis", splits={"train": "train.jsonl", "test": "test.jsonl"},
                       description="SNLI: first 100k train pairs (dev = 10% of premises, none shared) + official "
                       "test, from DATA_DIR/snli/{train,test}.jsonl"),
}
GLUE_TASKS = tuple(k for k, p in PRESETS.items() if p.hf_path == "nyu-mll/glue")


def _hf_load(path: str, name: str | None, data_files: Any, load_kwargs: dict):
    try:
        import datasets
    except ImportError as e:
        raise ImportError("loading Hugging Face datasets needs `pip install datasets` (extra: glotpool[hf])") from e
    local = Path(path)
    if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
        return datasets.load_from_disk(str(local))  # a folder written by save_to_disk
    return datasets.load_dataset(path, name, data_files=data_files, **load_kwargs)


def load_hf_dataset(
    path: str,
    name: str | None = None,
    *,
    data_files: Any = None,
    split_map: Mapping[str, str],
    text_col: str,
    text_col_2: str | None = None,
    label_col: str | None = None,
    score_col: str | None = None,
    label_names: Sequence[str] | None = None,
    **load_kwargs: Any,
) -> dict[str, TextDataset]:
    """Load splits with ``datasets``: a hub id (``load_dataset(path, name)``), a builder with ``data_files``
    (``load_dataset("json", data_files=...)``) or a local folder written by ``save_to_disk``.

    ``split_map`` maps our split names to source split names, e.g. ``{"train": "train", "test": "validation"}``.
    ``label_names`` turns integer class ids into names (a ``ClassLabel`` column's names are used when not given).
    """
    dd = _hf_load(path, name, data_files, load_kwargs)
    if not hasattr(dd, "keys"):  # a single Dataset (save_to_disk of one split)
        dd = {"train": dd}
    out = {}
    for ours, theirs in split_map.items():
        if theirs not in dd:
            raise ValueError(f"{path}{'/' + name if name else ''}: no split {theirs!r}; splits are {list(dd.keys())}")
        d = dd[theirs]
        names = label_names
        if names is None and label_col is not None:
            feat = d.features.get(label_col)
            names = getattr(feat, "names", None)
        wanted = [c for c in (text_col, text_col_2, label_col, score_col) if c is not None and c in d.column_names]
        # one arrow -> python conversion per column (iterating d[col] row by row is ~25x slower)
        cols = {c: None for c in d.column_names} | d.select_columns(wanted).to_dict()
        out[ours] = _columns_to_dataset(cols, len(d), source=f"{path}[{theirs}]",
                                        text_col=text_col, text_col_2=text_col_2, label_col=label_col,
                                        score_col=score_col, label_names=names)
    return out


def _carve_dev(splits: dict[str, TextDataset], preset: TaskPreset, seed: int) -> dict[str, TextDataset]:
    if "dev" in splits:
        return splits
    tr = splits["train"]
    frac = min(preset.dev_fraction, preset.dev_max / len(tr))
    splits["train"], splits["dev"], _ = split_dataset(tr, (1 - frac, frac, 0.0), seed=seed)
    return splits


def load_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    max_train: int | None = None,
    seed: int = 0,
    local_path: str | os.PathLike | None = None,
) -> tuple[TaskPreset, dict[str, TextDataset]]:
    """Load a preset task as ``(preset, {"train", "dev", "test"})``; class labels are the preset's names.

    * GLUE (``cola sst2 stsb mrpc qqp mnli qnli rte wnli``): ``datasets.load_dataset("nyu-mll/glue", name)``, or
      ``local_path`` = a folder written by ``DatasetDict.save_to_disk`` with the same splits/columns (offline).
      GLUE test labels are hidden (-1), so **test = the validation split** (MNLI: ``validation_matched``) and
      **dev = a seeded, stratified 10% of train** (at most 5000 rows); train is the rest.
    * ``pang-lee``: ``DATA_DIR/pang-lee/sentences.csv`` shuffled and split 80/10/10 (seeded, stratified).
    * ``snli``: ``DATA_DIR/snli/train.jsonl`` (dev = 10% of its premises, grouped by premise text - which keeps each
      captionID together too - so no premise is in both train and dev)
      and ``DATA_DIR/snli/test.jsonl``.

    ``DATA_DIR`` = ``data_dir`` or ``$GLOTPOOL_DATA`` or ``./data``; fill it with ``python scripts/fetch_data.py``.
    ``max_train`` keeps a seeded (stratified) subsample of train; dev/test are untouched.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown task {name!r}; presets: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if preset.hf_path is not None:
        src = str(local_path) if local_path is not None else preset.hf_path
        splits = load_hf_dataset(src, None if local_path is not None else preset.hf_name, split_map=preset.splits,
                                 text_col=preset.text_col, text_col_2=preset.text_col_2, label_col=preset.label_col,
                                 score_col=preset.score_col, label_names=preset.label_names)
        splits = _carve_dev(splits, preset, seed)
    else:
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        folder = root / name
        need = ["sentences.csv"] if name == "pang-lee" else list(preset.splits.values())
        missing = [f for f in need if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {missing}; run `python scripts/fetch_data.py --data-dir "
                                    f"{root} --only {name}` (or set GLOTPOOL_DATA)")
        if name == "pang-lee":
            ds = read_table(folder / "sentences.csv", text_col="text", label_col="label")
            tr, dv, te = split_dataset(ds, (0.8, 0.1, 0.1), seed=seed)
            splits = {"train": tr, "dev": dv, "test": te}
        else:  # snli
            kw = dict(text_col="premise", text_col_2="hypothesis", label_col="label")
            # group by premise text: stricter than captionID (22 premises recur under two captionIDs)
            train = read_table(folder / "train.jsonl", group_col="premise", **kw)
            tr, dv, _ = split_dataset(train, (0.9, 0.1, 0.0), seed=seed)
            splits = {"train": tr, "dev": dv, "test": read_table(folder / "test.jsonl", **kw)}
        for split, ds in splits.items():
            bad = sorted({y for y in ds.labels} - set(preset.label_names), key=str)
            if bad:
                raise ValueError(f"{folder} ({split}): labels {bad} are not among {list(preset.label_names)}; "
                                 "re-run scripts/fetch_data.py")
    if max_train is not None:
        splits["train"] = subsample(splits["train"], max_train, seed=seed)
    return preset, {k: splits[k] for k in ("train", "dev", "test")}
