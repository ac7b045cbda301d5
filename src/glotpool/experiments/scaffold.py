"""The one scaffold every runner shares: a loaded task -> its unique texts -> one cache -> cached splits.

    task = TaskSource(task="pang-lee").load()
    exp = prepare_experiment(backbone, task, "runs/x/cache")
    specs = [adapt_spec(PoolerSpec.parse(p), backbone) for p in ("mean", "cls", "glot")]
    for spec in specs: run_one(spec, exp.cache, exp.data, cfg, seed=0, ...)

``compare``, ``stress``, ``sweep``, ``train`` and ``dist train`` all go through these three functions, so the cache
text list, the decoder rule for ``cls`` and the GLOT defaults are written once.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from dataclasses import dataclass

from glotpool.data import LoadedTask
from glotpool.experiments.runs import PoolerSpec
from glotpool.states.backbone import Backbone
from glotpool.states.cache import TokenCache, build_cache, unique_texts
from glotpool.training.trainer import CachedSplits, prepare_splits


@dataclass
class Experiment:
    """A task with its texts cached: what :func:`~glotpool.experiments.runs.run_one` trains on."""

    task: LoadedTask
    cache: TokenCache
    data: CachedSplits
    cache_seconds: float  # time spent building (or reopening) the cache


def task_texts(task: LoadedTask) -> list[str]:
    """Every text of every split (first and second columns), unique, first-seen order: the cache's text list."""
    return unique_texts(*(col for ds in task.splits.values() for col in (ds.texts, ds.texts2)))


def prepare_experiment(backbone: Backbone, task: LoadedTask, cache_dir: str | os.PathLike, *,
                       batch_size: int = 32, show_progress: bool = True, overwrite: bool = False) -> Experiment:
    """Cache ``task``'s texts with ``backbone`` in ``cache_dir`` (reused / resumed when complete or interrupted)
    and index every split into it."""
    t0 = time.perf_counter()
    cache = build_cache(backbone, task_texts(task), cache_dir, batch_size=batch_size, show_progress=show_progress,
                        overwrite=overwrite)
    seconds = time.perf_counter() - t0
    data = prepare_splits(cache, task.splits, task.task_type, label_names=task.label_names,
                          score_range=task.score_range)
    return Experiment(task, cache, data, seconds)


def adapt_spec(spec: PoolerSpec, backbone: Backbone, glot_defaults: dict | None = None,
               announce: bool = False) -> PoolerSpec:
    """A spec as it runs on ``backbone``: ``cls`` becomes ``last`` on decoders (a decoder's first token has seen
    nothing of the sentence), and GLOT gets ``glot_defaults`` under its own options."""
    if spec.name == "cls" and backbone.is_decoder:
        if announce:
            print("note: cls pooling on a decoder is the first token; using 'last' instead", file=sys.stderr)
        spec = PoolerSpec("last", spec.options, "last" if spec.label == "cls" else spec.label)
    if spec.name == "glot" and glot_defaults:
        spec = spec.with_options(**glot_defaults)
    return spec


def graph_stats(spec: PoolerSpec, cache, idx: np.ndarray, batch_size: int = 64) -> dict:
    """Mean neighbours per real token and mean density of this spec's graph over the given cache rows."""
    import torch

    from glotpool.pooling import build_pooler, check_inputs
    from glotpool.pooling.graph import edges_per_token, graph_density

    pool = build_pooler(spec.name, in_dim=cache.dim, **spec.kwargs)
    edges, dens = [], []
    with torch.inference_mode():
        for s in range(0, len(idx), batch_size):
            h, m = cache.batch(idx[s:s + batch_size])
            h, m = check_inputs(h, m, cache.dim)
            adj = pool.build_graph(h, m)
            edges.append(edges_per_token(adj, m))
            dens.append(graph_density(adj, m))
    return {"edges_per_token": float(torch.cat(edges).mean()), "density": float(torch.cat(dens).mean())}
