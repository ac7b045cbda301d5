"""A converged linear probe: scikit-learn's logistic regression on a parameter-free pooler's vectors.

The reference a linear head must reach: ``LogisticRegression`` (L-BFGS to convergence) with its inverse
regularisation ``C`` chosen on dev from a log grid, refitted on train at the chosen ``C``, then the test split scored
once. Features are the pooled vectors (pairs: ``[z1 ‖ z2]``, the linear pair head's input), standardised on train.
"""
from __future__ import annotations

import numpy as np
import torch

from glotpool.pooling import build_pooler
from glotpool.states.cache import TokenCache
from glotpool.training.heads import head_class
from glotpool.training.metrics import compute_metrics
from glotpool.training.trainer import CachedSplit, CachedSplits

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@torch.inference_mode()
def pooled_features(pooler_name: str, cache: TokenCache, split: CachedSplit, batch_size: int = 256) -> np.ndarray:
    pool = build_pooler(pooler_name, in_dim=cache.dim)
    if pool.num_trainable_parameters():
        raise ValueError(f"the sklearn probe is for parameter-free poolers; {pooler_name!r} has parameters")

    def embed(idx):
        return np.concatenate([pool(*cache.batch(idx[i:i + batch_size])).float().numpy()
                               for i in range(0, len(idx), batch_size)])

    z = embed(split.idx1)
    return np.concatenate([z, embed(split.idx2)], 1) if split.idx2 is not None else z


def sklearn_probe(pooler_name: str, cache: TokenCache, data: CachedSplits, c_grid=C_GRID, metric: str = "accuracy",
                  max_iter: int = 5000) -> dict:
    """-> ``{"C", "dev": {...}, "test": {...}, "dev_by_C": {...}, "test_predictions": [...]}``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not head_class(data.task_type).is_classification:
        raise ValueError(f"the sklearn probe is a classifier; task type {data.task_type!r} has no classes")
    x = {s: pooled_features(pooler_name, cache, data[s]) for s in data.splits}
    y = {s: data[s].targets for s in data.splits}
    scaler = StandardScaler().fit(x["train"])
    x = {s: scaler.transform(v) for s, v in x.items()}
    n = data.num_labels

    def fit(c):
        return LogisticRegression(C=c, max_iter=max_iter).fit(x["train"], y["train"])

    dev_by_c = {}
    for c in c_grid:
        dev_by_c[c] = compute_metrics(data.task_type, fit(c).predict(x["dev"]), y["dev"], num_labels=n)[metric]
    best_c = max(c_grid, key=lambda c: (dev_by_c[c], -c))  # ties: the stronger regularisation
    model = fit(best_c)
    out = {"C": best_c, "dev_by_C": {str(c): v for c, v in dev_by_c.items()},
           "dev": compute_metrics(data.task_type, model.predict(x["dev"]), y["dev"], num_labels=n)}
    if "test" in data.splits:
        pred = model.predict(x["test"])
        out["test"] = compute_metrics(data.task_type, pred, y["test"], num_labels=n)
        out["test_predictions"] = pred.astype(float).tolist()
    return out
