"""Beyond one machine: distributed caching and DDP training (torchrun / Accelerate; gloo on CPU, nccl on GPU).

    torchrun --nproc_per_node=4 -m glotpool.distributed cache --data train.csv --out caches/x
    torchrun --nproc_per_node=4 -m glotpool.distributed train --cache caches/x --single train.csv \\
        --label-col label --pooler glot --out runs/x

**Caching.** Every rank tokenizes all texts and computes the same global, length-sorted shard plan
(:func:`glotpool.cache.plan_shards`); rank ``r`` encodes shards ``k % world_size == r`` and writes them under their
global names into the shared output folder, with its own ``progress.rankNNNNN.json`` (resumable per rank). After a
barrier, rank 0 runs the ordinary single-process :func:`~glotpool.cache.build_cache`, which adopts every rank's
hash-checked shards, encodes nothing and writes ``index.json``. Each shard holds exactly the batches a
single-process build would encode, so the result is byte-identical to a single-process cache (same hardware and
thread count). Without a process group (e.g. independent jobs of a job array) each rank just writes its shards;
run :func:`merge_cache` (``python -m glotpool.distributed merge``) afterwards.

**Training.** :func:`train_pooler_ddp` reproduces :func:`glotpool.train.train_pooler` with the *global* batch:
every rank draws the same batch order from the seed, pools its contiguous chunk of each global batch, the pooled
vectors ``z [B_r, D]`` are all-gathered into ``[B, D]`` in global order, and the head + loss run on the whole global
batch on every rank. So non-decomposable losses (in-batch-negative InfoNCE, CoSENT, class-weighted cross-entropy)
are exact too, and uneven last batches need no reweighting: short ranks pad with a repeat of the batch's first row
whose vector is dropped after the gather (zero gradient). DDP then all-reduces (means) the gradients; see
:class:`_GatherRows` for why the mean is the single-process gradient. Rank 0 evaluates, saves and broadcasts.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from glotpool.backbone import Backbone
from glotpool.cache import TokenCache, _remove_cache_files, build_cache, open_cache

if TYPE_CHECKING:  # the training side imports lazily: caching ranks need not load torch_geometric (~5 s)
    from glotpool.poolers import Pooler
    from glotpool.tasks import TaskHead
    from glotpool.train import CachedSplit, CachedSplits, PoolerWithHead, TrainConfig, TrainResult

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# process group helpers


def _pg_world() -> int | None:
    """World size of the initialised default process group, else None."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else None


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else the process group, else RANK/WORLD_SIZE (torchrun), else (0, 1)."""
    pg = _pg_world()
    if rank is None:
        rank = dist.get_rank() if pg else int(os.environ.get("RANK", 0))
    if world_size is None:
        world_size = pg or int(os.environ.get("WORLD_SIZE", 1))
    if pg and (rank, world_size) != (dist.get_rank(), pg):
        raise ValueError(f"rank={rank}, world_size={world_size} contradict the initialised process group "
                         f"(rank {dist.get_rank()} of {pg}); leave them out to use the process group's")
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def init_distributed(backend: str | None = None, timeout_minutes: float = 120.0) -> tuple[int, int, torch.device]:
    """Initialise the default process group from torchrun's environment -> (rank, world_size, device).

    ``backend``: nccl when CUDA is available, else gloo. GPU ranks use ``cuda:LOCAL_RANK``. The long default timeout
    lets fast ranks wait at a barrier while slow ranks still encode (NCCL's own default is 10 minutes).
    Already initialised -> nothing is re-initialised. Without torchrun variables: a one-process group is not
    created and (0, 1, device) is returned.
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if _pg_world():
        return dist.get_rank(), dist.get_world_size(), device
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, device
    backend = backend or ("nccl" if cuda else "gloo")
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size(), device


def _barrier() -> None:
    if _pg_world():
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------------
# distributed caching


def build_cache_distributed(backbone: Backbone, texts: Sequence[str], out_dir: str | os.PathLike, *,
                            rank: int | None = None, world_size: int | None = None, batch_size: int = 32,
                            shard_tokens: int = 1_000_000, store_dtype: str = "float16", show_progress: bool = True,
                            overwrite: bool = False, extra_meta: dict | None = None) -> TokenCache | None:
    """Encode this rank's shards of the global plan; with a process group also merge -> the complete cache.

    Every rank must pass the same ``texts`` (same order) and settings. Returns the opened cache on every rank when
    a process group is initialised (rank 0 merges after a barrier), else None on ranks of a world larger than one
    (run :func:`merge_cache` once all ranks are done). Rerunning resumes each rank at its first missing shard.
    """
    rank, world_size = resolve_rank(rank, world_size)
    kw = dict(batch_size=batch_size, shard_tokens=shard_tokens, store_dtype=store_dtype, extra_meta=extra_meta)
    if world_size == 1:
        return build_cache(backbone, texts, out_dir, show_progress=show_progress, overwrite=overwrite, **kw)
    pg = _pg_world() == world_size
    if overwrite:
        if not pg:
            raise ValueError("overwrite=True with several ranks needs an initialised process group (so that only "
                             "rank 0 deletes, before anyone writes); delete the old cache files first instead")
        if rank == 0:
            _remove_cache_files(Path(out_dir))
        _barrier()
    build_cache(backbone, texts, out_dir, rank=rank, world_size=world_size, show_progress=show_progress, **kw)
    if not pg:
        log.info("rank %d/%d finished its shards of %s; merge with merge_cache() once all ranks are done",
                 rank, world_size, out_dir)
        return None
    _barrier()
    cache = merge_cache(backbone, texts, out_dir, show_progress=False, **kw) if rank == 0 else None
    _barrier()
    return cache if rank == 0 else open_cache(out_dir, verify=False)


def merge_cache(backbone: Backbone, texts: Sequence[str], out_dir: str | os.PathLike, *, batch_size: int = 32,
                shard_tokens: int = 1_000_000, store_dtype: str = "float16", show_progress: bool = True,
                extra_meta: dict | None = None) -> TokenCache:
    """Write the index of a distributed build (one process): adopt all ranks' shards, encode any still missing.

    This is a single-process :func:`build_cache` resume, so a crashed rank's missing shards are simply computed
    here; the backbone runs only for those (it is needed for the tokenizer and the fingerprint anyway).
    """
    return build_cache(backbone, texts, out_dir, batch_size=batch_size, shard_tokens=shard_tokens,
                       store_dtype=store_dtype, show_progress=show_progress, extra_meta=extra_meta)


def iter_texts_streaming(path_or_name: str, text_col: str = "text", rank: int | None = None,
                         world_size: int | None = None, split: str = "train", **load_kwargs) -> Iterator[str]:
    """Stream this rank's part of a (huge) dataset's ``text_col`` without loading it: ``datasets`` streaming mode.

    ``path_or_name``: a hub id, or a local ``.json``/``.jsonl``/``.csv``/``.parquet``/``.txt`` file (or a list of
    such files via ``data_files=``). ``split_dataset_by_node`` gives each rank whole files when the number of files
    is divisible by ``world_size``, else every ``world_size``-th example: the ranks' parts are disjoint and cover
    the data. Each rank can then cache its part into its own folder (e.g. ``out/rank-00003``).
    """
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    rank, world_size = resolve_rank(rank, world_size)
    builders = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet",
                ".txt": "text"}
    p = Path(path_or_name).expanduser()
    if p.suffix.lower() in builders or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
        if p.suffix.lower() not in builders:
            raise ValueError(f"{p}: unknown extension {p.suffix!r}; use one of {sorted(builders)}")
        ds = load_dataset(builders[p.suffix.lower()], data_files=str(p), split=split, streaming=True, **load_kwargs)
    else:
        ds = load_dataset(path_or_name, split=split, streaming=True, **load_kwargs)
    ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    for i, ex in enumerate(ds):
        if i == 0 and text_col not in ex:
            raise ValueError(f"{path_or_name}: no column {text_col!r}; columns: {sorted(ex)}")
        yield ex[text_col]


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
                     out_dir: str | Path | None = None, ddp_kwargs: dict | None = None) -> TrainResult:
    """:func:`glotpool.train.train_pooler` with DistributedDataParallel; same result as one process, global batches.

    ``cfg.batch_size`` is the GLOBAL batch size (each rank pools ``ceil(B / world_size)`` rows). Call it on every
    rank with the same arguments after :func:`init_distributed` (no process group and no torchrun environment ->
    plain :func:`train_pooler`). GPU ranks train on ``cuda:LOCAL_RANK`` whatever ``cfg.device`` says. Rank 0
    evaluates dev after every epoch and broadcasts the metrics, so early stopping is the same on all ranks; rank 0
    evaluates test once and writes ``out_dir``; every rank returns the same :class:`TrainResult`.
    Exactness: equal to single-process training up to float rounding when the pooler and head have no dropout
    (dropout masks are drawn per rank, so with dropout the runs are only statistically alike).
    ``ddp_kwargs`` go to DistributedDataParallel (e.g. ``find_unused_parameters=True`` for a pooler with
    parameters some forward passes skip).
    """
    from glotpool.train import PoolerWithHead, evaluate, finish_run, fit, prepare_training

    if not _pg_world():
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise ValueError("WORLD_SIZE > 1 but no process group is initialised: call "
                             "glotpool.distributed.init_distributed() first")
        from glotpool.train import train_pooler
        return train_pooler(pooler, head, cache, data, cfg, out_dir=out_dir)
    rank, world = dist.get_rank(), dist.get_world_size()
    metric, higher = prepare_training(head, data, cfg)
    cuda = dist.get_backend() == "nccl" or str(cfg.device).startswith("cuda")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))) \
        if cuda else torch.device(cfg.device)
    model = PoolerWithHead(pooler, head).to(device)
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


# ----------------------------------------------------------------------------------------------------------------
# command line: python -m glotpool.distributed cache|merge|train ... (under torchrun or accelerate launch)


def add_cache_args(p: argparse.ArgumentParser) -> None:
    from glotpool.cache import STORE_DTYPES

    p.add_argument("--backbone", default="minilm", help="preset (minilm, smollm2), hub id or model folder")
    p.add_argument("--data", required=True, help="CSV / TSV / JSONL file with a header (every rank reads it)")
    p.add_argument("--out", required=True, help="shared cache folder (all ranks must see the same filesystem)")
    p.add_argument("--text-col", default="text")
    p.add_argument("--text-col-2", default=None, help="second text column of pair data (cached too)")
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float16", choices=sorted(STORE_DTYPES))
    p.add_argument("--shard-tokens", type=int, default=1_000_000)
    p.add_argument("--padding-side", choices=["left", "right"], default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")


def add_train_args(p: argparse.ArgumentParser) -> None:
    from glotpool.train import DEFAULT_METRIC, TrainConfig

    p.add_argument("--cache", required=True, help="cache folder holding every text of the splits")
    g = p.add_argument_group("data (read_table columns; files: --single, or --train/--test [--dev])")
    for name in ("single", "train", "dev", "test"):
        g.add_argument(f"--{name}", default=None)
    g.add_argument("--task-type", default="single", choices=sorted(DEFAULT_METRIC))
    g.add_argument("--text-col", default="text")
    g.add_argument("--text-col-2", default=None)
    g.add_argument("--label-col", default=None)
    g.add_argument("--score-col", default=None)
    p.add_argument("--pooler", default="glot", help="pooler spec, e.g. glot:conv=gcn,tau=0.4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (rank 0 writes best/, results.json)")
    p.add_argument("--quiet", action="store_true")
    d = TrainConfig()
    g = p.add_argument_group("training (--batch-size is the GLOBAL batch size)")
    for name in ("epochs", "batch_size", "patience"):
        g.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "grad_clip"):
        g.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    g.add_argument("--class-weights", action="store_true", help="inverse-frequency class weights")
    g.add_argument("--metric", default=None, help="dev metric for model selection (default by task type)")


def run_cache(args: argparse.Namespace) -> int:
    from glotpool.backbone import load_backbone
    from glotpool.data import read_table

    rank, world, device = init_distributed()
    ds = read_table(args.data, text_col=args.text_col, text_col_2=args.text_col_2)
    # unique texts, first-seen order: the same list as `glotpool cache`, so the two caches are interchangeable
    texts = list(dict.fromkeys([*ds.texts, *(ds.texts2 if args.text_col_2 else [])]))
    backbone = load_backbone(args.backbone, layer=args.layer, max_length=args.max_length,
                             padding_side=args.padding_side, device=str(device))
    cols = [args.text_col] + ([args.text_col_2] if args.text_col_2 else [])
    kw = dict(batch_size=args.batch_size, shard_tokens=args.shard_tokens, store_dtype=args.dtype,
              extra_meta={"data": str(args.data), "columns": cols, "rows": len(ds),
                          "texts": "unique texts of the columns, first-seen order"})
    if args.merge:
        cache = merge_cache(backbone, texts, args.out, show_progress=not args.quiet, **kw)
    else:
        cache = build_cache_distributed(backbone, texts, args.out, show_progress=not args.quiet and rank == 0,
                                        overwrite=args.overwrite, **kw)
    if rank == 0 and cache is not None:
        print(f"cached {len(cache)} texts ({int(cache.lengths.sum())} tokens) on {world} rank(s) -> {args.out}",
              file=sys.stderr)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from glotpool.data import load_splits
    from glotpool.experiment import PoolerSpec
    from glotpool.poolers import build_pooler
    from glotpool.tasks import build_head
    from glotpool.train import TrainConfig, prepare_splits, seed_everything

    rank, world, device = init_distributed()
    cache = open_cache(args.cache, verify=rank == 0)
    splits = load_splits(train=args.train, dev=args.dev, test=args.test, single=args.single, seed=args.seed,
                         text_col=args.text_col, text_col_2=args.text_col_2, label_col=args.label_col,
                         score_col=args.score_col)
    data = prepare_splits(cache, splits, args.task_type)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      patience=args.patience, grad_clip=args.grad_clip, seed=args.seed,
                      class_weights=args.class_weights, metric=args.metric, device=str(device),
                      show_progress=not args.quiet)
    spec = PoolerSpec.parse(args.pooler)
    seed_everything(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    pooler = build_pooler(spec.name, in_dim=cache.dim, **spec.kwargs)
    head_opts = {"num_labels": data.num_labels} if args.task_type in ("single", "pair") else {}
    head = build_head(args.task_type, pooler.out_dim, **head_opts)
    result = train_pooler_ddp(pooler, head, cache, data, cfg, out_dir=args.out)
    if rank == 0:
        print(f"{spec.label} on {world} rank(s): best epoch {result.best_epoch}, dev {result.dev}, "
              f"test {result.test}", file=sys.stderr)
    return 0


def _in_group(fn):
    """Run a command, then leave the process group it initialised (clean exit under torchrun)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        finally:
            if _pg_world():
                dist.destroy_process_group()
    return run


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``cache | merge | train`` sub-commands on ``parser`` (a new one by default; ``glotpool dist`` passes its own)."""
    parser = parser or argparse.ArgumentParser(prog="python -m glotpool.distributed",
                                               description="Distributed caching / DDP training (run under "
                                                           "torchrun or accelerate launch).")
    sub = parser.add_subparsers(dest="dist_command", metavar="COMMAND", required=True)
    c = sub.add_parser("cache", help="every rank encodes its shards; rank 0 writes the index")
    add_cache_args(c)
    c.set_defaults(func=_in_group(run_cache), merge=False)
    m = sub.add_parser("merge", help="one process: index a distributed build that ran without a process group")
    add_cache_args(m)
    m.set_defaults(func=_in_group(run_cache), merge=True)
    t = sub.add_parser("train", help="DDP training of a pooler on a cache (global batch = --batch-size)")
    add_train_args(t)
    t.set_defaults(func=_in_group(run_train))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"glotpool.distributed {args.dist_command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["resolve_rank", "init_distributed", "build_cache_distributed", "merge_cache", "iter_texts_streaming",
           "train_pooler_ddp", "GlobalBatchLoss", "local_rows", "main"]
