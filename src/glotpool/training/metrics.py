"""Evaluation metrics (thin wrappers over scikit-learn / scipy); every function returns a python float.

Classification: ``preds`` and ``golds`` are class ids ``[N]`` (``compute_metrics`` also takes logits ``[N, C]``).
Regression (STS): ``preds`` / ``golds`` are scores ``[N]``. Correlations of a constant input are undefined: they
return ``nan`` (no warning); callers selecting models must treat nan as "worst".
Retrieval: ``scores`` is a similarity matrix ``[Q, D]`` (query q, document d; higher = more relevant) and
``relevant[q]`` the set of relevant document indices of query q (non-empty). Documents are ranked by descending
score, ties broken by lower index. Relevance is binary. With ``ranked=True``, ``scores`` is instead a list of Q
ranked document-index lists (best first, any length).
"""
from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np

# every metric compute_metrics can return -> whether larger is better (for model selection / early stopping)
METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "macro_f1": True, "f1": True, "mcc": True, "pearson": True, "spearman": True,
    "mrr@10": True, "ndcg@10": True, "recall@1": True, "recall@5": True, "recall@10": True, "loss": False,
}


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _pair(preds, golds) -> tuple[np.ndarray, np.ndarray]:
    p, g = _np(preds).reshape(-1), _np(golds).reshape(-1)
    if p.shape != g.shape:
        raise ValueError(f"preds and golds differ in length: {p.shape[0]} vs {g.shape[0]}")
    if p.size == 0:
        raise ValueError("metrics need at least one example")
    return p, g


# ----------------------------------------------------------------------------------------------- classification


def accuracy(preds, golds) -> float:
    p, g = _pair(preds, golds)
    return float(np.mean(p == g))


def macro_f1(preds, golds) -> float:
    """Unweighted mean of per-class F1 over the classes present in preds or golds (sklearn ``average='macro'``)."""
    from sklearn.metrics import f1_score

    p, g = _pair(preds, golds)
    return float(f1_score(g, p, average="macro", zero_division=0))


def f1(preds, golds, pos_label=1) -> float:
    """Binary F1 of class ``pos_label``; 0.0 when it is never predicted nor gold (no true/false positives)."""
    from sklearn.metrics import f1_score

    p, g = _pair(preds, golds)
    labels = set(p.tolist()) | set(g.tolist())
    if len(labels - {pos_label}) > 1:
        raise ValueError(f"binary f1 needs at most 2 classes, got {sorted(labels, key=str)}; use macro_f1")
    return float(f1_score(g == pos_label, p == pos_label, zero_division=0))


def matthews_corrcoef(preds, golds) -> float:
    """MCC in [-1, 1]; 0.0 when preds or golds are constant (sklearn's convention)."""
    from sklearn.metrics import matthews_corrcoef as mcc

    p, g = _pair(preds, golds)
    return float(mcc(g, p))


# ----------------------------------------------------------------------------------------------- correlation


def _corr(fn, x, y) -> float:
    a, b = _pair(x, y)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")  # undefined: constant input (scipy would warn and return nan too)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(a, b)[0])


def pearson(preds, golds) -> float:
    """Pearson r; nan for constant input or fewer than 2 items."""
    from scipy.stats import pearsonr

    return _corr(pearsonr, preds, golds)


def spearman(preds, golds) -> float:
    """Spearman rho (Pearson of average ranks, ties averaged); nan for constant input or fewer than 2 items."""
    from scipy.stats import spearmanr

    return _corr(spearmanr, preds, golds)


# ----------------------------------------------------------------------------------------------- retrieval


def _rankings(scores, k: int, ranked: bool) -> list[np.ndarray]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if ranked:
        return [np.asarray(list(r), dtype=np.int64)[:k] for r in scores]
    s = _np(scores).astype(np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be a [Q, D] matrix, got shape {s.shape} (pass ranked=True for ranked lists)")
    # stable sort of -s: descending score, ties -> lower document index first
    return list(np.argsort(-s, axis=1, kind="stable")[:, :k])


def _relevant(relevant: Sequence[Iterable[int]], n_queries: int) -> list[set]:
    rel = [set(int(d) for d in r) for r in relevant]
    if len(rel) != n_queries:
        raise ValueError(f"relevant has {len(rel)} entries but there are {n_queries} queries")
    empty = [q for q, r in enumerate(rel) if not r]
    if empty:
        raise ValueError(f"queries {empty[:10]} have no relevant document; drop them before scoring")
    return rel


def reciprocal_ranks_at_k(scores, relevant, k: int = 10, *, ranked: bool = False) -> np.ndarray:
    """Per query 1 / (rank of the first relevant doc), 0 if none in the top k -> ``[Q]`` (their mean is MRR@k)."""
    runs = _rankings(scores, k, ranked)
    rel = _relevant(relevant, len(runs))
    out = np.zeros(len(runs))
    for q, (run, r) in enumerate(zip(runs, rel)):
        hits = [i for i, d in enumerate(run.tolist()) if d in r]
        out[q] = 1.0 / (hits[0] + 1) if hits else 0.0
    return out


def mrr_at_k(scores, relevant, k: int = 10, *, ranked: bool = False) -> float:
    """Mean over queries of 1 / (rank of the first relevant doc), 0 if none in the top k."""
    return float(reciprocal_ranks_at_k(scores, relevant, k, ranked=ranked).mean())


def recall_at_k(scores, relevant, k: int = 10, *, ranked: bool = False) -> float:
    """Mean over queries of |relevant in top k| / |relevant|."""
    runs = _rankings(scores, k, ranked)
    rel = _relevant(relevant, len(runs))
    return float(np.mean([len(set(run.tolist()) & r) / len(r) for run, r in zip(runs, rel)]))


def ndcg_at_k(scores, relevant, k: int = 10, *, ranked: bool = False) -> float:
    """Mean nDCG@k, binary gains: DCG = sum_{rank i<=k, doc relevant} 1/log2(i+1), divided by the ideal DCG
    sum_{i=1}^{min(k, |relevant|)} 1/log2(i+1)."""
    runs = _rankings(scores, k, ranked)
    rel = _relevant(relevant, len(runs))
    out = []
    for run, r in zip(runs, rel):
        dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(run.tolist()) if d in r)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(r))))
        out.append(dcg / idcg)
    return float(np.mean(out))


# ----------------------------------------------------------------------------------------------- dispatch


def compute_metrics(task_type: str, preds, golds, num_labels: int | None = None) -> dict[str, float]:
    """All metrics of a task type.

    * ``"single"`` / ``"pair"`` (classification): preds = class ids ``[N]`` or logits ``[N, C]`` (argmax taken),
      golds = class ids ``[N]`` -> accuracy, macro_f1, mcc, and f1 (of class 1) when binary (``num_labels == 2``,
      or when not given and all ids are in {0, 1}).
    * ``"sts"``: preds = predicted scores ``[N]``, golds = gold scores ``[N]`` -> pearson, spearman (nan if constant).
    * ``"retrieval"``: preds = similarity matrix ``[Q, D]``, golds = per-query relevant doc index sets ->
      mrr@10, ndcg@10, recall@1, recall@5, recall@10.
    """
    from glotpool.training.heads import head_class

    if head_class(task_type).is_classification:
        p = _np(preds)
        if p.ndim == 2:
            p = p.argmax(axis=1)
        g = _np(golds)
        out = {"accuracy": accuracy(p, g), "macro_f1": macro_f1(p, g), "mcc": matthews_corrcoef(p, g)}
        if num_labels is not None:
            binary = num_labels == 2
        else:
            binary = set(np.unique(np.concatenate([p.ravel(), g.ravel()])).tolist()) <= {0, 1}
        if binary:
            out["f1"] = f1(p, g)
        return out
    if task_type == "sts":
        return {"pearson": pearson(preds, golds), "spearman": spearman(preds, golds)}
    if task_type == "retrieval":
        return {"mrr@10": mrr_at_k(preds, golds, 10), "ndcg@10": ndcg_at_k(preds, golds, 10),
                "recall@1": recall_at_k(preds, golds, 1), "recall@5": recall_at_k(preds, golds, 5),
                "recall@10": recall_at_k(preds, golds, 10)}
    raise AssertionError(f"compute_metrics has no metrics for task type {task_type!r}")  # a new head needs them
