"""Text datasets and the table readers (CSV / TSV / JSONL).

A split is a :class:`TextDataset` - parallel python lists, nothing framework specific::

    texts   [N] str             first (or only) sentence
    texts2  [N] str | None      second sentence of pair tasks (NLI, paraphrase, STS)
    labels  [N] str|int|float   class labels as read (str/int) or float scores (STS) | None
    groups  [N] hashable | None items sharing a group (e.g. an SNLI premise) never straddle two splits
    texts3  [N] str | None      third text: a retrieval example's hard negative (NLI triplets: the contradiction)

Everything that reads input validates it and raises ``ValueError`` naming the file, the rows and the fix; rows are
never dropped silently. Row numbers in messages are 1-based data rows (the header row is not counted).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from glotpool.io_utils import rows_str


# ----------------------------------------------------------------------------------------------- dataset


@dataclass
class TextDataset:
    """One split: parallel lists of texts (and second texts, labels, groups). See the module docstring."""

    texts: list[str]
    texts2: list[str] | None = None
    labels: list | None = None
    groups: list | None = None
    texts3: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        for name in ("texts2", "labels", "groups", "texts3"):
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
        return TextDataset(pick(self.texts), pick(self.texts2), pick(self.labels), pick(self.groups),
                           pick(self.texts3))


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
    text_col_3: str | None = None,
) -> TextDataset:
    """Validate + convert column lists (missing cells are ``None``) into a TextDataset. Shared by every reader."""
    if label_col is not None and score_col is not None:
        raise ValueError("give label_col (classification) or score_col (regression), not both")
    wanted = [c for c in (text_col, text_col_2, text_col_3, label_col, score_col, group_col) if c is not None]
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise ValueError(f"{source}: column(s) {missing} not found; the columns are {list(cols)}")
    if n == 0:
        raise ValueError(f"{source}: no data rows")

    def texts_of(col: str) -> list[str]:
        nested = [i + 1 for i, v in enumerate(cols[col]) if isinstance(v, (list, dict))]
        if nested:  # JSON lists / objects: str() would train on their Python repr
            raise ValueError(f"{source}: column {col!r} holds a JSON list or object, not a text, at row(s) "
                             f"{rows_str(nested)}; flatten it to a string")
        vals = [("" if v is None else str(v)).strip() for v in cols[col]]
        empty = [i + 1 for i, v in enumerate(vals) if not v]
        if empty:
            raise ValueError(f"{source}: empty text in column {col!r} at row(s) {rows_str(empty)}; "
                             "fix or remove those rows")
        return vals

    texts = texts_of(text_col)
    texts2 = texts_of(text_col_2) if text_col_2 is not None else None
    texts3 = texts_of(text_col_3) if text_col_3 is not None else None
    labels = None
    if label_col is not None:
        raw = [v.strip() if isinstance(v, str) else v for v in cols[label_col]]
        bad = [i + 1 for i, v in enumerate(raw) if v is None or v == ""]
        if bad:
            raise ValueError(f"{source}: missing label in column {label_col!r} at row(s) {rows_str(bad)}")
        if label_names is not None:  # integer class ids (HF ClassLabel) -> names; -1 = hidden label
            k = len(label_names)
            bad = [i + 1 for i, v in enumerate(raw) if not (isinstance(v, (int, np.integer)) and 0 <= v < k)]
            if bad:
                raise ValueError(f"{source}: label(s) outside 0..{k - 1} at row(s) {rows_str(bad)} (e.g. "
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
            raise ValueError(f"{source}: score column {score_col!r} is not a finite number at row(s) {rows_str(bad)}"
                             f" (e.g. {cols[score_col][bad[0] - 1]!r})")
    groups = list(cols[group_col]) if group_col is not None else None
    return TextDataset(texts, texts2, labels, groups, texts3)


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
        raise ValueError(f"{path}: row(s) {rows_str(ragged)} have a different number of fields than the "
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
        raise ValueError(f"{path}: row(s) {rows_str(bad)} are not JSON objects")
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
    text_col_3: str | None = None,
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
    (strings for CSV/TSV), ``score_col`` is parsed as float. ``text_col_3``: a third text column (retrieval hard
    negatives).

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
                               label_col=label_col, score_col=score_col, group_col=group_col, text_col_3=text_col_3)


def from_hf_dataset(dataset, text_col: str = "text", text_col_2: str | None = None, label_col: str | None = None,
                    score_col: str | None = None, group_col: str | None = None) -> TextDataset:
    """An in-memory ``datasets.Dataset`` + column names -> a TextDataset (validated like a file).

    A ``ClassLabel`` label column gives label names (class ids -> names).
    """
    names = list(getattr(dataset, "column_names", None) or [])
    if not names:
        raise ValueError(f"expected a datasets.Dataset (with column_names), got {type(dataset).__name__}")
    feature = getattr(dataset, "features", {}).get(label_col) if label_col else None
    label_names = list(feature.names) if feature is not None and hasattr(feature, "names") else None
    wanted = [c for c in (text_col, text_col_2, label_col, score_col, group_col) if c is not None and c in names]
    cols = {c: list(dataset[c]) for c in wanted}
    cols.update({c: [] for c in names if c not in cols})  # listed in errors, not read
    return _columns_to_dataset(cols, len(dataset), source=f"datasets.Dataset({len(dataset)} rows)",
                               text_col=text_col, text_col_2=text_col_2, label_col=label_col, score_col=score_col,
                               group_col=group_col, label_names=label_names)
