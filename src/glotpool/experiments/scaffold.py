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
from glotpool.training.heads import head_class
from glotpool.training.trainer import CachedSplits, prepare_splits


@dataclass
class Experiment:
    """A task with its texts cached: what :func:`~glotpool.experiments.runs.run_one` trains on."""

    task: LoadedTask
    cache: TokenCache
    data: CachedSplits
    cache_seconds: float  # time spent building (or reopening) the cache


def task_texts(task: LoadedTask) -> list[str]:
    """Every text of every split (first, second and hard-negative columns), unique, first-seen order: the cache's
    text list."""
    return unique_texts(*(col for ds in task.splits.values()
                          for col in (ds.texts, ds.texts2, getattr(ds, "texts3", None))))


def prepare_experiment(backbone: Backbone, task: LoadedTask, cache_dir: str | os.PathLike, *,
                       batch_size: int = 32, show_progress: bool = True, overwrite: bool = False,
                       shard_tokens: int = 1_000_000) -> Experiment:
    """Cache ``task``'s texts with ``backbone`` in ``cache_dir`` (reused / resumed when complete or interrupted)
    and index every split into it."""
    data_warnings(task, backbone)
    t0 = time.perf_counter()
    cache = build_cache(backbone, task_texts(task), cache_dir, batch_size=batch_size, show_progress=show_progress,
                        overwrite=overwrite, shard_tokens=shard_tokens)
    seconds = time.perf_counter() - t0
    data = prepare_splits(cache, task.splits, task.task_type, label_names=task.label_names,
                          score_range=task.score_range)
    return Experiment(task, cache, data, seconds)


def data_warnings(task: LoadedTask, backbone: Backbone | None = None, out=None) -> list[str]:
    """Warn (stderr; never fail) about data that silently skews a result: dev/test texts that also occur in train
    (leakage), one text with two different labels in train, texts the backbone truncates. Returns the warnings."""
    out = out or sys.stderr
    msgs = []
    train = task.splits.get("train")
    if train is not None:
        key = (lambda ds, i: (ds.texts[i], ds.texts2[i]) if ds.texts2 is not None else ds.texts[i])
        seen = {key(train, i) for i in range(len(train))}
        for name, ds in task.splits.items():
            if name == "train":
                continue
            n = sum(key(ds, i) in seen for i in range(len(ds)))
            if n:
                msgs.append(f"{n} of {len(ds)} {name} examples also occur in train (leakage: their {name} score "
                            f"is not held-out); deduplicate the files")
        if train.labels is not None and head_class(task.task_type).is_classification:
            labels: dict = {}
            for i in range(len(train)):
                labels.setdefault(key(train, i), set()).add(str(train.labels[i]))
            clash = sum(len(v) > 1 for v in labels.values())
            if clash:
                msgs.append(f"{clash} train text(s) occur with two or more different labels; check the label column")
    if backbone is not None:
        max_len = backbone.config.max_length
        texts = task_texts(task)
        lengths = [len(ids) for ids in backbone.tokenize(texts, padding=False, return_tensors=None,
                                                         truncation=False)["input_ids"]]  # prompted, if any
        over = sum(n > max_len for n in lengths)
        if over:
            msgs.append(f"{over} of {len(texts)} texts are longer than max_length={max_len} tokens and are truncated "
                        f"(longest {max(lengths)}); raise --max-length to keep them whole")
    for m in msgs:
        print(f"warning: {m}", file=out)
    return msgs


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
    """Mean neighbours per real token and mean density of this spec's graph over the given cache rows (the states
    the spec reads: its layer or layer mix, its tokens)."""
    import torch

    from glotpool.pooling import build_pooler

    pool = build_pooler(spec.name, in_dim=cache.dim, **spec.pooler_kwargs(cache))
    with torch.inference_mode():
        return graph_density_of(pool, (spec.states.read(cache, idx[s:s + batch_size])
                                       for s in range(0, len(idx), batch_size)))


def graph_density_of(pool, batches) -> dict:
    """``{"edges_per_token", "density"}``: means over the sentences of ``batches`` (``(h, mask)`` pairs) of GLOT
    ``pool``'s token graphs. The one measurement `compare`, `sweep` and `layers` report."""
    import torch

    from glotpool.pooling import check_inputs
    from glotpool.pooling.graph import edges_per_token, graph_density

    edges, dens = [], []
    for h, m in batches:
        h, m = check_inputs(h, m, pool.in_dim, pool.config.layer_mix)
        adj = pool.build_graph(h, m)
        edges.append(edges_per_token(adj, m))
        dens.append(graph_density(adj, m))
    return {"edges_per_token": float(torch.cat(edges).mean()), "density": float(torch.cat(dens).mean())}


def backbone_variant(backbone: Backbone, **config) -> Backbone:
    """``backbone`` reading other states (:class:`~glotpool.states.backbone.BackboneConfig` fields: ``prompt=``,
    ``layers=``, ...) with the same loaded model and tokenizer: no second load. ``backbone`` itself when nothing
    changes."""
    from dataclasses import replace

    cfg = replace(backbone.config, **config)
    if cfg == backbone.config:
        return backbone
    return type(backbone)(config=cfg, model=backbone.model, tokenizer=backbone.tokenizer, device=backbone.device,
                          source=backbone.source)
