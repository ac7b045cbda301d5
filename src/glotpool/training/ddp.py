"""DistributedDataParallel training over a token cache (torchrun / accelerate; gloo on CPU, nccl on GPU).

:func:`train_pooler_ddp` reproduces :func:`glotpool.training.trainer.train_pooler` with the *global* batch:
every rank draws the same batch order from the seed, pools its contiguous chunk of each global batch, the pooled
vectors ``z [B_r, D]`` are all-gathered into ``[B, D]`` in global order, and the head + loss run on the whole global
batch on every rank. So non-decomposable losses (in-batch-negative InfoNCE, CoSENT, class-weighted cross-entropy)
are exact too, and uneven last batches need no reweighting: short ranks pad with a repeat of the batch's first row
whose vector is dropped after the gather (zero gradient). DDP then all-reduces (means) the gradients; see
:class:`_GatherRows` for why the mean is the single-process gradient. Rank 0 evaluates, saves and broadcasts.

Distributed *caching* lives with the cache (:func:`glotpool.states.cache.build_cache_distributed`); the command
line is ``glotpool dist cache|merge|train`` (:mod:`glotpool.cli.dist`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from glotpool.pooling import Pooler
from glotpool.states.cache import TokenCache, _pg_world
from glotpool.training.heads import TaskHead
from glotpool.training.trainer import (DEFAULT_STATES, CachedSplit, CachedSplits, PoolerWithHead, StateSelection,
                                       TrainConfig, TrainResult, evaluate, finish_run, fit, prepare_training,
                                       train_pooler)

# ----------------------------------------------------------------------------------------------------------------
# DDP training


class _GatherRows(torch.autograd.Function):
    """All-gather ``x [m, D]`` from every rank -> ``[W*m, D]`` (rank order), differentiable.

    Every rank computes the same loss ``L`` from the same gathered tensor, so the incoming gradient ``dL/dZ`` is
    the same on every rank and rank ``r``'s slice of it is the gradient of its own rows: no communication needed
    backward. It is multiplied by ``W`` because DDP *averages* gradients: pooler grads become
    ``mean_r(W * g_r) = sum_r g_r`` (the full gradient) and the head's (already full on every rank) stay full.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        m = grad.shape[0] // ctx.world
        return grad[ctx.rank * m:(ctx.rank + 1) * m] * ctx.world


def local_rows(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous chunk of a global batch, padded to ``ceil(B / W)`` rows with ``rows[0]``.

    Chunks are contiguous and padding comes last, so after the gather the real rows are exactly positions ``[:B]``
    in global order.
    """
    m = math.ceil(len(rows) / world_size)
    part = rows[rank * m:(rank + 1) * m]
    return np.concatenate([part, np.repeat(rows[:1], m - len(part))]) if len(part) < m else part


class GlobalBatchLoss(nn.Module):
    """``forward(cache, split, rows, device) -> loss`` of the GLOBAL batch ``rows`` (same value on every rank)."""

    def __init__(self, model: PoolerWithHead, rank: int, world_size: int):
        super().__init__()
        self.model, self.rank, self.world_size = model, rank, world_size

    def _pooled(self, cache: TokenCache, idx: np.ndarray, rows: np.ndarray, device) -> Tensor:
        z = self.model.embed(cache, idx[local_rows(rows, self.rank, self.world_size)], device)  # [m, D]
        return _GatherRows.apply(z)[:len(rows)]  # [B, D], global order

    def forward(self, cache: TokenCache, split: CachedSplit, rows: np.ndarray, device) -> Tensor:
        z1 = self._pooled(cache, split.idx1, rows, device)
        z2 = self._pooled(cache, split.idx2, rows, device) if split.idx2 is not None else None
        out = self.model.head(z1, z2)
        target = torch.from_numpy(split.targets[rows]).to(device) if split.targets is not None else None
        return self.model.head.loss(out, target)


def _broadcast(obj, device):
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def train_pooler_ddp(pooler: Pooler, head: TaskHead, cache: TokenCache, data: CachedSplits, cfg: TrainConfig,
                     out_dir: str | Path | None = None, ddp_kwargs: dict | None = None,
                     states: StateSelection = DEFAULT_STATES) -> TrainResult:
    """:func:`glotpool.training.trainer.train_pooler` with DistributedDataParallel; same result as one process, global batches.

    ``cfg.batch_size`` is the GLOBAL batch size (each rank pools ``ceil(B / world_size)`` rows). Call it on every
    rank with the same arguments after :func:`init_distributed` (no process group and no torchrun environment ->
    plain :func:`train_pooler`). GPU ranks train on ``cuda:LOCAL_RANK`` whatever ``cfg.device`` says. Rank 0
    evaluates dev after every epoch and broadcasts the metrics, so early stopping is the same on all ranks; rank 0
    evaluates test once and writes ``out_dir``; every rank returns the same :class:`TrainResult`.
    Exactness: equal to single-process training up to float rounding when the pooler and head have no dropout
    (dropout masks are drawn per rank, so with dropout the runs are only statistically alike).
    ``ddp_kwargs`` go to DistributedDataParallel (e.g. ``find_unused_parameters=True`` for a pooler with
    parameters some forward passes skip). ``states``: which of the cache's layers / tokens the pooler reads, as in
    :func:`train_pooler`.
    """
    if not _pg_world():
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise ValueError("WORLD_SIZE > 1 but no process group is initialised: call "
                             "glotpool.states.cache.init_distributed() first")
        return train_pooler(pooler, head, cache, data, cfg, out_dir=out_dir, states=states)
    rank, world = dist.get_rank(), dist.get_world_size()
    metric, higher = prepare_training(head, data, cfg)
    cuda = dist.get_backend() == "nccl" or str(cfg.device).startswith("cuda")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))) \
        if cuda else torch.device(cfg.device)
    model = PoolerWithHead(pooler, head, states).to(device)
    step = None
    if any(p.requires_grad for p in model.parameters()):  # DDP refuses a module without trainable parameters
        step = nn.parallel.DistributedDataParallel(GlobalBatchLoss(model, rank, world),
                                                   device_ids=[device.index] if device.type == "cuda" else None,
                                                   **(ddp_kwargs or {}))
    num_labels = data.num_labels or None

    def loss_fn(rows):
        return step(cache, data["train"], rows, device)  # gradients all-reduced: identical on every rank

    def eval_dev():  # rank 0 evaluates; every rank gets the metrics, so early stopping agrees
        dev = evaluate(model, cache, data["dev"], data.task_type, cfg.eval_batch_size, device, num_labels) \
            if rank == 0 else None
        return _broadcast(dev, device)

    best_epoch, history, seconds = fit(model, cache, data, cfg, metric, higher, loss_fn, eval_dev,
                                       cfg.show_progress and rank == 0)
    result = None
    if rank == 0:
        result = finish_run(model, cache, data, cfg, metric, best_epoch, history, seconds, device, out_dir)
    result = _broadcast(result, device)  # also a barrier: out_dir is complete when any rank returns
    return result
