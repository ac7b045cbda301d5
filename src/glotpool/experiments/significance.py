"""Paired significance tests on one test set: is pooler A's score different from pooler B's beyond chance?

Both take per-example predictions of the two poolers on the *same* test rows (the pairing removes the variance of
which examples happen to be in the test set, which dominates at a few hundred rows):

* :func:`paired_bootstrap` — resample test rows with replacement (10,000 times, seeded), recompute the metric
  difference ``m(A) − m(B)`` on each resample; 95 % percentile interval and a two-sided p-value
  ``2 · min(P(Δ* ≤ 0), P(Δ* ≥ 0))``. With several seeds, each pooler's predictions are first averaged over seeds
  (class predictions: the per-row share of seeds that are right; scores: the mean score), so the test is on the
  seed-averaged model, as the table reports it.
* :func:`mcnemar` — exact McNemar test for one seed of two classifiers: only rows where exactly one is right count;
  ``p = 2 · P(Binomial(n01 + n10, ½) ≤ min(n01, n10))``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PairedTest:
    delta: float  # metric(A) - metric(B) on the full test set
    low: float  # 95 % interval of delta
    high: float
    p_value: float
    method: str


def _scorer(kind: str):
    """Per-resample metric of seed-averaged predictions: 'accuracy' on correctness shares, else a correlation."""
    if kind == "accuracy":
        return lambda x, gold: float(x.mean())
    from scipy.stats import pearsonr, spearmanr

    corr = spearmanr if kind == "spearman" else pearsonr
    return lambda x, gold: float(corr(x, gold)[0])


def per_row(predictions: list, golds: np.ndarray, kind: str) -> np.ndarray:
    """Seeds' predictions ``[S][N]`` -> one value per row: the share of seeds right (accuracy), or the mean score."""
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    return (p == np.asarray(golds)[None]).mean(0) if kind == "accuracy" else p.mean(0)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, golds: np.ndarray, kind: str = "accuracy",
                     n_resamples: int = 10_000, seed: int = 0) -> PairedTest:
    """``a``, ``b``: per-row values from :func:`per_row` of two poolers on the same test rows."""
    a, b, golds = np.asarray(a, float), np.asarray(b, float), np.asarray(golds)
    if a.shape != b.shape or a.shape[0] != golds.shape[0]:
        raise ValueError(f"paired test needs the same test rows: got {a.shape}, {b.shape}, golds {golds.shape}")
    score = _scorer(kind)
    delta = score(a, golds) - score(b, golds)
    rng = np.random.default_rng(seed)
    n = len(a)
    if kind == "accuracy":  # vectorised: the metric is a mean
        idx = rng.integers(0, n, size=(n_resamples, n))
        deltas = (a - b)[idx].mean(1)
    else:
        deltas = np.empty(n_resamples)
        for i in range(n_resamples):
            idx = rng.integers(0, n, size=n)
            deltas[i] = score(a[idx], golds[idx]) - score(b[idx], golds[idx])
    deltas = deltas[~np.isnan(deltas)]
    p = 2.0 * min((deltas <= 0).mean(), (deltas >= 0).mean())
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return PairedTest(float(delta), float(lo), float(hi), float(min(1.0, p)), f"paired bootstrap ({n_resamples:,} "
                      "resamples of test rows, seed-averaged predictions)")


def mcnemar(pred_a: np.ndarray, pred_b: np.ndarray, golds: np.ndarray) -> PairedTest:
    """Exact McNemar test of two classifiers' predictions (one seed each) on the same test rows."""
    from scipy.stats import binomtest

    right_a, right_b = np.asarray(pred_a) == golds, np.asarray(pred_b) == golds
    n01, n10 = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p = 1.0 if n01 + n10 == 0 else binomtest(min(n01, n10), n01 + n10, 0.5).pvalue
    delta = float(right_a.mean() - right_b.mean())
    # normal-approximation interval of the paired difference of proportions
    se = np.sqrt(max(n01 + n10 - (n01 - n10) ** 2 / len(golds), 0.0)) / len(golds)
    return PairedTest(delta, delta - 1.96 * se, delta + 1.96 * se, float(p), "exact McNemar (one seed)")


def compare_to_best(rows: dict[str, list], golds: np.ndarray, kind: str, best: str) -> dict[str, PairedTest]:
    """Each pooler (``label -> per-seed predictions``) against ``best``: McNemar when both have one seed of class
    predictions, else the paired bootstrap of seed-averaged predictions."""
    out = {}
    for label, preds in rows.items():
        if label == best:
            continue
        if kind == "accuracy" and len(preds) == 1 and len(rows[best]) == 1:
            out[label] = mcnemar(np.asarray(preds[0]), np.asarray(rows[best][0]), golds)
        else:
            out[label] = paired_bootstrap(per_row(preds, golds, kind), per_row(rows[best], golds, kind), golds, kind)
    return out
