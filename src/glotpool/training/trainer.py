"""Train a pooler + task head on cached token states. The backbone never runs here.

    splits = prepare_splits(cache, {"train": ds_train, "dev": ds_dev, "test": ds_test}, task_type="single")
    seed_everything(0)
    pooler = build_pooler("glot", in_dim=cache.dim)
    head = build_head("single", pooler.out_dim, num_labels=splits.num_labels)
    result = train_pooler(pooler, head, cache, splits, TrainConfig(epochs=20), out_dir="runs/glot")

Model selection: the dev split's main metric after every epoch; the best epoch's weights are kept (early stopping
after ``patience`` epochs without improvement) and the test split is evaluated **once**, with those weights.
"""
from __future__ import annotations

import copy
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from glotpool.states.cache import TokenCache
from glotpool.data import TextDataset, encode_labels
from glotpool.io_utils import atomic_dir, atomic_write_json, atomic_write_text
from glotpool.training.metrics import METRIC_HIGHER_IS_BETTER, compute_metrics
from glotpool.pooling import Pooler
from glotpool.training.heads import TaskHead, default_metric, head_class



def autocast(device: torch.device | str, precision: str):
    """Mixed-precision context of the poolers and heads, in training and at inference (the encoder and the server
    use this same function): 'fp32' = off, 'bf16' = bfloat16 autocast (fp32 master weights; the poolers keep
    softmaxes and graph similarities in fp32), 'auto' = 'bf16' where the device computes bf16 natively
    (:func:`glotpool.states.backbone.resolve_dtype`), else 'fp32'."""
    if precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"unknown precision {precision!r}; use 'fp32', 'bf16' or 'auto'")
    device = torch.device(device)
    if precision == "auto":
        from glotpool.states.backbone import resolve_dtype

        precision = "bf16" if resolve_dtype("auto", device) == "bfloat16" else "fp32"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 5  # epochs without dev improvement before stopping; 0 = never stop early
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    seed: int = 0
    class_weights: bool = False  # inverse-frequency loss weights (classification)
    eval_batch_size: int = 128
    metric: str | None = None  # dev metric for model selection; default by task type
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (autocast: ~1.5-2.5x faster matmuls on CPUs with AVX512-BF16/AMX and GPUs)
    schedule: str = "constant"  # learning rate over the run: constant | cosine | linear (decay to 0 at `epochs`)
    warmup: float = 0.0  # share of the run's steps with a linear warm-up from 0 (cosine / linear schedules)
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a share of the steps in [0, 1), got {self.warmup}")


SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up over the first ``warmup · total`` steps, then constant, cosine (``½(1 + cos πt)``) or linear
    decay to 0 at ``total``; ``t`` runs from 0 to 1 over the steps after warm-up."""
    if schedule == "constant":
        return 1.0
    n_warm = int(warmup * total)
    if step < n_warm:
        return (step + 1) / n_warm
    t = min(1.0, (step - n_warm) / max(1, total - n_warm))
    return 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t


# ----------------------------------------------------------------------------------------------------------------
# data: text splits -> cache indices + targets


@dataclass
class CachedSplit:
    idx1: np.ndarray  # [N] cache index of the first text
    idx2: np.ndarray | None  # [N] cache index of the second text (pair tasks)
    targets: np.ndarray | None  # class ids [N] (int64), scores [N] (float32), or None (retrieval)
    idx3: np.ndarray | None = None  # [N] cache index of a hard negative (retrieval triplets)
    groups: np.ndarray | None = None  # [N] int group ids (retrieval: rows of one group never share a batch)

    def __len__(self) -> int:
        return len(self.idx1)


@dataclass
class CachedSplits:
    task_type: str
    splits: dict[str, CachedSplit]
    label_names: list[str] | None = None
    score_range: tuple[float, float] | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names or [])

    def __getitem__(self, name: str) -> CachedSplit:
        return self.splits[name]


def prepare_splits(cache: TokenCache, datasets: dict[str, TextDataset], task_type: str,
                   label_names: Sequence[str] | None = None,
                   score_range: tuple[float, float] | None = None) -> CachedSplits:
    """Map every split's texts to cache rows and encode its targets.

    Classification labels are encoded with the train split's classes (or ``label_names``); a dev/test label train
    never saw is an error. STS scores are rescaled from ``score_range`` (default: train's min/max) to [0, 1].
    """
    head_class(task_type)  # refuses an unknown task type, listing the valid ones
    if "train" not in datasets:
        raise ValueError(f"a 'train' split is required; got splits {sorted(datasets)}")
    for name, ds in datasets.items():
        if len(ds) == 0:
            raise ValueError(f"the {name!r} split is empty")
    pair = task_type in ("pair", "sts", "retrieval")
    for name, ds in datasets.items():
        if pair and ds.texts2 is None:
            raise ValueError(f"task type {task_type!r} needs two texts per example, but the {name!r} split has "
                             "one; give the second text column (text_col_2)")
        if task_type != "retrieval" and ds.labels is None:
            raise ValueError(f"the {name!r} split has no labels/scores; give label_col (or score_col for sts)")
    names = list(datasets)
    targets: list[np.ndarray | None] = [None] * len(names)
    if head_class(task_type).is_classification:
        label_names, arrays = encode_labels(datasets["train"].labels,
                                            *[datasets[n].labels for n in names if n != "train"],
                                            names=label_names, split_names=[n for n in names if n != "train"])
        rest = iter(arrays[1:])
        targets = [arrays[0] if n == "train" else next(rest) for n in names]
    elif task_type == "sts":
        raw = [np.asarray(datasets[n].labels, dtype=np.float32) for n in names]
        lo, hi = score_range or (float(raw[names.index("train")].min()), float(raw[names.index("train")].max()))
        if hi <= lo:
            raise ValueError(f"sts scores need a non-empty range, got [{lo}, {hi}]")
        score_range = (lo, hi)
        targets = [np.clip((r - lo) / (hi - lo), 0.0, 1.0).astype(np.float32) for r in raw]
    splits = {}
    for n, t in zip(names, targets):
        ds = datasets[n]
        idx1 = np.asarray(cache.lookup(ds.texts), dtype=np.int64)
        idx2 = np.asarray(cache.lookup(ds.texts2), dtype=np.int64) if pair else None
        retrieval = task_type == "retrieval"
        idx3 = (np.asarray(cache.lookup(ds.texts3), dtype=np.int64)
                if retrieval and getattr(ds, "texts3", None) is not None else None)
        groups = None
        if retrieval and ds.groups is not None:
            ids: dict = {}
            groups = np.asarray([ids.setdefault(g, len(ids)) for g in ds.groups], dtype=np.int64)
        splits[n] = CachedSplit(idx1, idx2, t, idx3, groups)
    return CachedSplits(task_type, splits, list(label_names) if label_names else None, score_range)


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = 20) -> list[np.ndarray]:
    """Shuffled batches of positions ``0..N-1`` whose members have similar lengths (less padding to compute).

    Shuffle, cut into chunks of ``bucket_batches`` batches, sort each chunk by length, cut into batches, shuffle
    the batch order: random enough for SGD, and padding waste falls several-fold on mixed-length data.
    """
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket_batches
    batches = []
    for s in range(0, len(order), chunk):
        part = order[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def group_separated_batches(groups: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of positions ``0..N-1`` in which no two rows share a group id (e.g. two triplets of one
    NLI premise: each would be the other's false in-batch negative).

    Rows are taken in a random order; a row whose group already is in the open batch waits for a later batch. Every
    row lands in exactly one batch; only the last batches of a pass may be short (a group larger than the rest of
    the data ends up in batches of its own)."""
    queue = [int(i) for i in rng.permutation(len(groups))]
    batches: list[np.ndarray] = []
    while queue:
        cur, seen, rest = [], set(), []
        for i in queue:
            g = int(groups[i])
            if g in seen:
                rest.append(i)
                continue
            cur.append(i)
            seen.add(g)
            if len(cur) == batch_size:
                batches.append(np.asarray(cur, dtype=np.int64))
                cur, seen = [], set()
        if cur:
            batches.append(np.asarray(cur, dtype=np.int64))
        queue = rest
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


# ----------------------------------------------------------------------------------------------------------------
# model = pooler + head


TOKEN_CHOICES = ("all", "text")


@dataclass(frozen=True)
class StateSelection:
    """Which of a cache's states a run reads: :meth:`TokenCache.batch`'s ``layers`` and ``tokens``.

    ``layers``: None = the cache's one layer (a cache holding several needs a choice); an int = one hidden_states
    index (negative from the end: -1 = the last layer); a tuple of indices, or ``"all"`` (every layer the cache
    holds) = a learned layer mix: the pooler gets ``[B, L, K, D]`` and is built with ``layer_mix=K``.
    ``tokens``: ``"all"`` = every real token (a prompt's too: ``last`` = the final token), ``"text"`` = only the
    text's own span (echo prompt: the second copy). The default selection reads exactly what ``cache.batch(idx)``
    returns, through the same call.
    """

    layers: int | tuple[int, ...] | str | None = None
    tokens: str = "all"

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_CHOICES:
            raise ValueError(f"tokens must be one of {TOKEN_CHOICES}, got {self.tokens!r}")
        lay = self.layers
        if isinstance(lay, list):
            object.__setattr__(self, "layers", lay := tuple(lay))
        ok = (lay is None or lay == "all" or (isinstance(lay, int) and not isinstance(lay, bool)) or
              (isinstance(lay, tuple) and len(lay) >= 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                  for x in lay)))
        if not ok:
            raise ValueError(f"layers must be None, one int, 'all' or a tuple of two or more ints (a layer mix), "
                             f"got {lay!r}")

    @property
    def is_default(self) -> bool:
        return self.layers is None and self.tokens == "all"

    @property
    def mixed(self) -> bool:
        return self.layers == "all" or isinstance(self.layers, tuple)

    def mix_size(self, cache: TokenCache) -> int | None:
        """K of the ``[B, L, K, D]`` a mixed selection reads from ``cache`` (the pooler's ``layer_mix``); None when
        it reads one layer. ValueError when the selection does not fit the layers the cache holds."""
        held = tuple(cache.layers)
        if self.layers is None:
            if len(held) > 1:
                raise ValueError(f"the cache {cache.path} holds layers {list(held)}: choose one (pooler option "
                                 f"layer=N) or a mix (mix=all, mix=4+8+12)")
            return None
        if not self.mixed:
            return None
        k = len(held) if self.layers == "all" else len(self.layers)
        if k < 2:
            raise ValueError(f"a layer mix needs a cache of two or more layers; {cache.path} holds "
                             f"{list(held) or 'one'} (build it with layers=... / --layers)")
        return k

    def read(self, cache: TokenCache, idx, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``cache.batch(idx)`` with this selection: ``(H [B, L, D] or [B, L, K, D], mask [B, L])``."""
        if self.is_default:
            return cache.batch(idx, dtype)  # the plain read (every single-layer cache, every earlier run)
        return cache.batch(idx, dtype, **self.batch_kwargs())

    def batch_kwargs(self) -> dict:
        """``layers`` / ``tokens`` as :meth:`TokenCache.batch` and :class:`~glotpool.encoder.Encoder` take them."""
        return {"layers": None if self.layers == "all" else self.layers, "tokens": self.tokens}

    def as_dict(self) -> dict:
        return {"layers": list(self.layers) if isinstance(self.layers, tuple) else self.layers,
                "tokens": self.tokens}


DEFAULT_STATES = StateSelection()


MEMO_MAX_FLOATS = 1 << 28  # 1 GiB of fp32 pooled vectors: above that, a parameter-free pooler pools every time


class PoolerWithHead(nn.Module):
    """A pooler and a task head trained together on cached states.

    A pooler with no parameters (mean, max, cls, last, weighted_mean) is a fixed function of a row's states, so its
    vector is computed once per cache row and memoized (:meth:`embed`): every later epoch and evaluation trains
    only the head on the stored vectors, the way a linear probe on precomputed features would (the same values:
    each row is pooled over its own tokens).
    """

    def __init__(self, pooler: Pooler, head: TaskHead, states: StateSelection = DEFAULT_STATES):
        super().__init__()
        self.pooler, self.head, self.states = pooler, head, states
        self._memo: dict | None = {} if next(pooler.parameters(), None) is None else None

    def embed(self, cache: TokenCache, idx: np.ndarray, device) -> Tensor:
        if self._memo is None or len(cache) * self.pooler.out_dim > MEMO_MAX_FLOATS:
            h, mask = self.states.read(cache, idx)
            return self.pooler(h.to(device), mask.to(device))
        dev_type = torch.device(device).type
        key = (cache.key, str(device),  # under autocast the pooler's output (and so the vectors) differ
               torch.get_autocast_dtype(dev_type) if torch.is_autocast_enabled(dev_type) else None)
        idx = np.asarray(idx, dtype=np.int64)
        # a normal tensor even when the first call comes from evaluate()'s inference mode: training reads it later
        with torch.inference_mode(False), torch.no_grad():
            if key not in self._memo:
                self._memo[key] = (torch.zeros(len(cache), self.pooler.out_dim, device=device),
                                   np.zeros(len(cache), dtype=bool))
            z, done = self._memo[key]
            todo = np.unique(idx[~done[idx]])
            if len(todo):
                h, mask = self.states.read(cache, todo)
                z[torch.from_numpy(todo).to(device)] = self.pooler(h.to(device), mask.to(device)).float()
                done[todo] = True
        return z[torch.from_numpy(idx).to(device)]

    def forward(self, cache: TokenCache, split: CachedSplit, rows: np.ndarray, device) -> Tensor:
        z1 = self.embed(cache, split.idx1[rows], device)
        z2 = self.embed(cache, split.idx2[rows], device) if split.idx2 is not None else None
        if getattr(split, "idx3", None) is not None and self.training:  # hard negatives: a training-loss input
            return self.head(z1, z2, self.embed(cache, split.idx3[rows], device))
        return self.head(z1, z2)


@torch.inference_mode()
def evaluate(model: PoolerWithHead, cache: TokenCache, split: CachedSplit, task_type: str,
             batch_size: int = 128, device="cpu", num_labels: int | None = None,
             precision: str = "fp32") -> dict[str, float]:
    """All metrics of ``task_type`` on one split (the model in eval mode, no gradient)."""
    with autocast(device, precision):
        return _evaluate(model, cache, split, task_type, batch_size, device, num_labels)


def _evaluate(model, cache, split, task_type, batch_size, device, num_labels):
    model.eval()
    order = np.argsort(cache.lengths[split.idx1], kind="stable")  # length-sorted: less padding
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if task_type == "retrieval":
        q = torch.cat([model.embed(cache, split.idx1[b], device) for b in batches])
        d = torch.cat([model.embed(cache, split.idx2[b], device) for b in batches])
        q, d = q.float(), d.float()
        sims = (torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T).cpu()
        return compute_metrics("retrieval", sims.numpy(), [{i} for i in range(len(order))])
    raw = torch.cat([model(cache, split, b, device).float().cpu() for b in batches])
    golds = split.targets[np.concatenate(batches)]
    metrics = compute_metrics(task_type, model.head.predictions(raw).numpy(), golds, num_labels=num_labels)
    metrics["loss"] = float(model.head.loss(raw, torch.from_numpy(golds)))  # the tie-break of model selection
    return metrics


@torch.inference_mode()
def predict_split(model: PoolerWithHead, cache: TokenCache, split: CachedSplit, batch_size: int = 128,
                  device="cpu", precision: str = "fp32") -> np.ndarray:
    """The head's predictions (class ids, or scores) for every row of ``split``, in row order: what the paired
    significance tests compare between two poolers."""
    model.eval()
    order = np.argsort(cache.lengths[split.idx1], kind="stable")
    out = np.empty(len(order), dtype=np.float64)
    with autocast(device, precision):
        for i in range(0, len(order), batch_size):
            b = order[i:i + batch_size]
            pred = model.head.predictions(model(cache, split, b, device).float()).cpu().numpy()
            out[b] = pred.argmax(-1) if pred.ndim == 2 else pred
    return out


# ----------------------------------------------------------------------------------------------------------------
# training loop


@dataclass
class TrainResult:
    best_epoch: int
    dev: dict[str, float]
    test: dict[str, float] | None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    trainable_parameters: int = 0
    metric: str = ""
    test_predictions: list | None = None  # per test row (class id or score): for paired significance tests


def _is_better(value: float, best: float | None, higher: bool, loss: float | None = None,
               best_loss: float | None = None) -> bool:
    """A better dev metric wins; on a tie (common for accuracy on a few hundred rows) the lower dev loss wins."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    if value == best:
        return loss is not None and best_loss is not None and loss < best_loss
    return value > best if higher else value < best


def resolve_metric(cfg: TrainConfig, task_type: str) -> tuple[str, bool]:
    """The dev metric for model selection and whether higher is better."""
    metric = cfg.metric or default_metric(task_type)
    if metric not in METRIC_HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRIC_HIGHER_IS_BETTER)}")
    return metric, METRIC_HIGHER_IS_BETTER[metric]


def prepare_training(head: TaskHead, data: CachedSplits, cfg: TrainConfig) -> tuple[str, bool]:
    """Checks and set-up shared by every trainer: dev split, metric, seeds, class weights."""
    if "dev" not in data.splits:
        raise ValueError("training needs a 'dev' split for model selection (carve one from train)")
    metric, higher = resolve_metric(cfg, data.task_type)
    seed_everything(cfg.seed)
    if cfg.class_weights and head.is_classification and head.class_weights is None:
        counts = np.bincount(data["train"].targets, minlength=data.num_labels).astype(np.float64)
        weights = len(data["train"]) / (data.num_labels * np.maximum(counts, 1))
        head.class_weights = torch.tensor(weights, dtype=torch.float32)
        head.config.class_weights = weights.tolist()  # saved with the head
    return metric, higher


def fit(model: PoolerWithHead, cache: TokenCache, data: CachedSplits, cfg: TrainConfig, metric: str, higher: bool,
        loss_fn: Callable[[np.ndarray], Tensor], eval_dev: Callable[[], dict], show_progress: bool = True
        ) -> tuple[int, list[dict], float]:
    """The epoch loop: AdamW steps over length-bucketed batches, dev evaluation, early stopping.

    ``loss_fn(rows)`` returns the loss of one batch of train rows; ``eval_dev()`` the dev metrics. At the end the
    model holds the best epoch's weights. Returns ``(best_epoch, history, train_seconds)``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if params else None
    rng = np.random.default_rng(cfg.seed)  # the same batch order in every trainer and on every rank
    lengths = cache.lengths[data["train"].idx1]
    best, best_loss, best_state, best_epoch, bad_epochs, history = None, None, None, 0, 0, []
    steps_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total_steps, step = cfg.epochs * steps_per_epoch, 0
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {model.pooler.name}", unit="epoch", leave=False,
               disable=not show_progress or None)
    for epoch in bar:
        model.train()
        te = time.perf_counter()
        losses = []
        if optimizer is not None:
            groups = data["train"].groups if data.task_type == "retrieval" else None
            batches = (group_separated_batches(groups, cfg.batch_size, rng) if groups is not None
                       else length_bucketed_batches(lengths, cfg.batch_size, rng))
            for rows in batches:
                if data.task_type == "retrieval" and len(rows) < 2:
                    continue  # in-batch negatives need a second example
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, total_steps, cfg.schedule, cfg.warmup)
                step += 1
                loss = loss_fn(rows)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                losses.append(loss.item())
        epoch_seconds = time.perf_counter() - te
        dev = eval_dev()
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                        "seconds": epoch_seconds, **{f"dev_{k}": v for k, v in dev.items()}})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", **{f"dev_{metric}": f"{dev[metric]:.4f}"})
        improved = _is_better(dev[metric], best, higher) or best_state is None  # the metric itself moved
        if improved or _is_better(dev[metric], best, higher, dev.get("loss"), best_loss):
            # a tie with a lower dev loss is the better checkpoint, but not progress: patience counts epochs
            # without a better dev *metric*, so a run plateaued at its best score still stops
            best, best_loss, best_epoch = dev[metric], dev.get("loss"), epoch
            bad_epochs = 0 if improved else bad_epochs + 1
            best_state = copy.deepcopy(model.state_dict())
            if not improved and cfg.patience and bad_epochs >= cfg.patience:
                break
        else:
            bad_epochs += 1
            if cfg.patience and bad_epochs >= cfg.patience:
                break
        if optimizer is None:
            break  # nothing to train: one evaluation is the result
    model.load_state_dict(best_state)
    return best_epoch, history, time.perf_counter() - t0


def finish_run(model: PoolerWithHead, cache: TokenCache, data: CachedSplits, cfg: TrainConfig, metric: str,
               best_epoch: int, history: list[dict], train_seconds: float, device,
               out_dir: str | Path | None = None) -> TrainResult:
    """Evaluate the selected weights on dev and (once) on test; save the run when ``out_dir`` is given."""
    num_labels = data.num_labels or None
    dev = evaluate(model, cache, data["dev"], data.task_type, cfg.eval_batch_size, device, num_labels, cfg.precision)
    test = (evaluate(model, cache, data["test"], data.task_type, cfg.eval_batch_size, device, num_labels,
                     cfg.precision) if "test" in data.splits else None)
    preds = None
    if test is not None and data.task_type != "retrieval":
        preds = predict_split(model, cache, data["test"], cfg.eval_batch_size, device, cfg.precision).tolist()
    result = TrainResult(best_epoch=best_epoch, dev=dev, test=test, history=history, train_seconds=train_seconds,
                         test_predictions=preds,
                         seconds_per_epoch=float(np.mean([h["seconds"] for h in history])),
                         trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
                         metric=metric)
    if out_dir is not None:
        save_run(out_dir, model, result, cfg, data, cache)
    return result


def train_pooler(pooler: Pooler, head: TaskHead, cache: TokenCache, data: CachedSplits, cfg: TrainConfig,
                 out_dir: str | Path | None = None, states: StateSelection = DEFAULT_STATES) -> TrainResult:
    """AdamW on pooler + head over the cache; returns dev/test metrics of the best-dev-epoch weights.

    ``states``: which of the cache's layers / tokens the pooler reads (:class:`StateSelection`). With
    ``out_dir``: writes ``best/`` (pooler + head, atomically), ``results.json`` (with the selection) and
    ``results.md``.
    """
    metric, higher = prepare_training(head, data, cfg)
    device = torch.device(cfg.device)
    model = PoolerWithHead(pooler, head, states).to(device)
    train = data["train"]

    def loss_fn(rows):
        with autocast(device, cfg.precision):
            out = model(cache, train, rows, device)
        target = torch.from_numpy(train.targets[rows]).to(device) if train.targets is not None else None
        return head.loss(out.float(), target)

    def eval_dev():
        return evaluate(model, cache, data["dev"], data.task_type, cfg.eval_batch_size, device,
                        data.num_labels or None, cfg.precision)

    best_epoch, history, seconds = fit(model, cache, data, cfg, metric, higher, loss_fn, eval_dev,
                                       cfg.show_progress)
    return finish_run(model, cache, data, cfg, metric, best_epoch, history, seconds, device, out_dir)


def environment() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def save_run(out_dir: str | Path, model: PoolerWithHead, result: TrainResult, cfg: TrainConfig,
             data: CachedSplits, cache: TokenCache) -> None:
    out_dir = Path(out_dir)
    with atomic_dir(out_dir / "best", marker="labels.json", what="glotpool run's best/ folder") as tmp:
        model.pooler.save_pretrained(tmp / "pooler")
        model.head.save_pretrained(tmp / "head")
        atomic_write_json(tmp / "labels.json", {"task_type": data.task_type, "label_names": data.label_names,
                                               "score_range": data.score_range})
    record = {"pooler": model.pooler.name, "pooler_config": asdict(model.pooler.config),
              "head": model.head.task_type, "head_config": asdict(model.head.config), "train_config": asdict(cfg),
              "result": asdict(result), "cache": {"path": str(cache.path), "key": cache.key,
                                                  "backbone": cache.meta.get("identity", {}).get("backbone")},
              "sizes": {k: len(v) for k, v in data.splits.items()}, "environment": environment()}
    if not model.states.is_default:  # what an Encoder must read from the backbone to reproduce training
        record["states"] = model.states.as_dict()
    atomic_write_json(out_dir / "results.json", record)
    atomic_write_text(out_dir / "results.md", format_result_table(model.pooler.name, result))


def format_result_table(name: str, result: TrainResult) -> str:
    keys = list(result.dev)
    lines = [f"# {name}: best epoch {result.best_epoch}, {result.trainable_parameters:,} trainable parameters, "
             f"{result.seconds_per_epoch:.2f} s/epoch", "", "| split | " + " | ".join(keys) + " |",
             "|---|" + "---|" * len(keys)]
    for split, m in (("dev", result.dev), ("test", result.test)):
        if m:
            lines.append(f"| {split} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"
