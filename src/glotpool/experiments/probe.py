"""A converged linear probe: scikit-learn's logistic regression on a parameter-free pooler's vectors.

The reference a linear head must reach: ``LogisticRegression`` (L-BFGS to convergence) with its inverse
regularisation ``C`` chosen on dev from a log grid (extended by a decade, up to three times, while the best ``C`` sits
on its edge; a one-point grid is fitted as given), refitted on train at the chosen ``C``, then the test split scored
once. Features are the pooled vectors (pairs: ``[z1 ‖ z2]``, the linear pair head's input), standardised on train.
:func:`fit_probe` is the probe itself (on any features: ``glotpool layers`` runs it once per layer);
:func:`sklearn_probe` feeds it a pooler's vectors of cached states.
"""
from __future__ import annotations

import numpy as np
import torch

from glotpool.experiments.budgets import beyond_edge
from glotpool.pooling import build_pooler
from glotpool.states.cache import TokenCache
from glotpool.training.heads import head_class
from glotpool.training.metrics import compute_metrics
from glotpool.training.trainer import DEFAULT_STATES, CachedSplit, CachedSplits, StateSelection

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
MAX_EXTENSIONS = 3  # decades added beyond C_GRID's edge while the best C sits on it


@torch.inference_mode()
def pooled_features(pooler_name: str, cache: TokenCache, split: CachedSplit, batch_size: int = 256,
                    states: StateSelection = DEFAULT_STATES) -> np.ndarray:
    pool = build_pooler(pooler_name, in_dim=cache.dim)
    if pool.num_trainable_parameters():
        raise ValueError(f"the sklearn probe is for parameter-free poolers; {pooler_name!r} has parameters")
    if states.mixed:
        raise ValueError("the sklearn probe pools one layer; a layer mix has parameters to learn")

    def embed(idx):
        return np.concatenate([pool(*states.read(cache, idx[i:i + batch_size])).float().numpy()
                               for i in range(0, len(idx), batch_size)])

    z = embed(split.idx1)
    return np.concatenate([z, embed(split.idx2)], 1) if split.idx2 is not None else z


def pair_features(z: np.ndarray, split: CachedSplit) -> np.ndarray:
    """One split's probe input from per-text vectors ``z [N_texts, D]`` (rows = cache rows): ``z1`` or ``[z1 ‖ z2]``."""
    x = z[split.idx1]
    return np.concatenate([x, z[split.idx2]], 1) if split.idx2 is not None else x


def fit_probe(x: dict[str, np.ndarray], y: dict[str, np.ndarray], task_type: str, num_labels: int,
              c_grid=C_GRID, metric: str = "accuracy", max_iter: int = 5000) -> dict:
    """The probe on features ``x[split]`` with targets ``y[split]`` (needs train and dev; test is scored once,
    after ``C`` is chosen on dev) -> ``{"C", "dev", "dev_by_C", "test"?, "test_predictions"?}``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if not head_class(task_type).is_classification:
        raise ValueError(f"the sklearn probe is a classifier; task type {task_type!r} has no classes")
    scaler = StandardScaler().fit(x["train"])
    x = {s: scaler.transform(v) for s, v in x.items()}

    def fit(c):
        # one BLAS thread: L-BFGS's matmuls are skinny (D x classes), and two threads ran each fit 2x *slower* on
        # 2 cores (SNLI, 5,000 pairs x 1,152 features: 27 s vs 14 s)
        with threadpool_limits(1, user_api="blas"):
            return LogisticRegression(C=c, max_iter=max_iter).fit(x["train"], y["train"])

    def score(model, split):
        return compute_metrics(task_type, model.predict(x[split]), y[split], num_labels=num_labels)

    models, dev = {}, {}
    grid = sorted(c_grid)
    for _ in range(1 + MAX_EXTENSIONS):
        for c in grid:
            if c not in models:  # L-BFGS is deterministic: the chosen C's model is the refit on train
                models[c] = fit(c)
                dev[c] = score(models[c], "dev")
        best_c = max(grid, key=lambda c: (dev[c][metric], -c))  # ties: the stronger regularisation
        wider = beyond_edge(tuple(grid), best_c)  # on a decade grid: one decade past the edge dev chose
        if wider is None:
            break
        grid = sorted(grid + [wider])
    model = models[best_c]
    out = {"C": best_c, "dev_by_C": {str(c): dev[c][metric] for c in sorted(dev)}, "dev": dev[best_c]}
    if "test" in x:
        pred = model.predict(x["test"])
        out["test"] = compute_metrics(task_type, pred, y["test"], num_labels=num_labels)
        out["test_predictions"] = pred.astype(float).tolist()
    return out


def sklearn_probe(pooler_name: str, cache: TokenCache, data: CachedSplits, c_grid=C_GRID, metric: str = "accuracy",
                  max_iter: int = 5000, states: StateSelection = DEFAULT_STATES) -> dict:
    """The probe on ``pooler_name``'s vectors of ``states`` -> :func:`fit_probe`'s result."""
    if not head_class(data.task_type).is_classification:
        raise ValueError(f"the sklearn probe is a classifier; task type {data.task_type!r} has no classes")
    x = {s: pooled_features(pooler_name, cache, data[s], states=states) for s in data.splits}
    return fit_probe(x, {s: data[s].targets for s in data.splits}, data.task_type, data.num_labels, c_grid,
                     metric, max_iter)
