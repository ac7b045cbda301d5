"""Seeded (stratified, grouped) splits, subsampling, and label encoding."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from glotpool.data.datasets import TextDataset, _is_regression, read_table

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


MIN_DEV_ROWS = 200  # a dev split smaller than this cannot tell two poolers apart (±3.5 points at 50 %)


def dev_fraction_for(n_train: int, fraction: float = 0.1, min_rows: int = MIN_DEV_ROWS) -> float:
    """The share of ``n_train`` rows to carve out as dev: ``max(fraction, min_rows / n)``, at most half.

    Warns (stderr) when the data is too small for a ``min_rows`` dev split and half of train is used instead."""
    if n_train < 2:
        raise ValueError(f"need at least 2 training rows to carve a dev split, got {n_train}; pass --dev FILE")
    frac = max(fraction, min_rows / n_train)
    if frac > 0.5:
        import sys

        print(f"warning: only {n_train} training rows: dev = {n_train // 2} rows (half of train) is too small to "
              f"select on reliably (>= {min_rows} wanted); pass a --dev file or more data", file=sys.stderr)
        frac = 0.5
    return frac


def load_splits(
    train: str | os.PathLike | None = None,
    dev: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    single: str | os.PathLike | None = None,
    ratios: Sequence[float] | None = None,
    seed: int = 0,
    dev_fraction: float | None = None,
    stratify: bool = True,
    **read_kwargs: Any,
) -> dict[str, TextDataset]:
    """Read ``{"train", "dev", "test"}`` splits from files (every file read with ``read_kwargs``).

    Accepted combinations: ``single`` (one file, split by ``ratios`` with ``seed``; default: test 10 %, dev
    :func:`dev_fraction_for` of the rest); ``train + dev + test``;
    ``train + test`` (dev = a seeded, stratified ``dev_fraction`` of train; default
    :func:`dev_fraction_for`: 10 %, at least 200 rows).
    """
    if single is not None:
        if any(p is not None for p in (train, dev, test)):
            raise ValueError("give either single= (one file to split) or train=/dev=/test= files, not both")
        ds = read_table(single, **read_kwargs)
        if ratios is None:
            dev = dev_fraction_for(int(len(ds) * 0.9)) * 0.9
            ratios = (0.9 - dev, dev, 0.1)
        tr, dv, te = split_dataset(ds, ratios, seed=seed, stratify=stratify)
        return {"train": tr, "dev": dv, "test": te}
    if train is None or test is None:
        raise ValueError("need --train and --test files (--dev optional: carved from --train), or --data to split "
                         f"one file (Python: train=, test=, dev=, single=); got --train {train}, --dev {dev}, "
                         f"--test {test}")
    out = {"train": read_table(train, **read_kwargs), "test": read_table(test, **read_kwargs)}
    if dev is not None:
        out["dev"] = read_table(dev, **read_kwargs)
    else:
        if dev_fraction is None:
            dev_fraction = dev_fraction_for(len(out["train"]))
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
