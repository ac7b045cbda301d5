"""Task heads: what sits on top of the pooled sentence vector ``z`` during training.

=============  ==========================================  ===========================================
task type      head                                        loss
=============  ==========================================  ===========================================
``single``     linear on ``z``                             cross-entropy (optional class weights)
``pair``       linear on ``[z1 ‖ z2]`` or                  cross-entropy
               ``[z1, z2, |z1 − z2|, z1 ∗ z2]``
``sts``        ``cos(z1, z2)`` (no parameters)             MSE vs gold rescaled to [0, 1], or CoSENT
``retrieval``  ``cos(q, d) / T`` over in-batch documents   symmetric InfoNCE (in-batch negatives
               (+ every row's hard negative, if given)     + hard negatives; ``T`` set or learnable)
=============  ==========================================  ===========================================

Each head: ``forward(z1, z2=None) -> out``, ``loss(out, target)``, ``predictions(out)`` (what the metrics take).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glotpool.configured import ConfiguredModule

HEADS: dict[str, type["TaskHead"]] = {}  # task type -> head class: the one owner of the task-type facts


def _register(cls):
    HEADS[cls.task_type] = cls
    return cls


@dataclass
class HeadConfig:
    dim: int  # the pooler's out_dim


class TaskHead(ConfiguredModule):
    kind: ClassVar[str] = "head"
    task_type: ClassVar[str] = ""
    is_pair: ClassVar[bool] = False  # takes two texts per example
    is_classification: ClassVar[bool] = False  # class labels -> label ids, num_labels, class weights
    default_metric: ClassVar[str] = ""  # the dev metric that selects the model unless the user names one
    Config: ClassVar[type] = HeadConfig

    def __init__(self, dim: int, **options):
        super().__init__()
        self._configure(self.task_type, dim=dim, **options)

    def loss(self, out: Tensor, target: Tensor | None) -> Tensor:
        raise NotImplementedError

    def predictions(self, out: Tensor) -> Tensor:
        return out

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``head.json`` + ``head.safetensors`` into folder ``path`` (each file written atomically)."""
        self._save(path, "head.json", "head.safetensors", {"task_type": self.task_type})

    @staticmethod
    def from_pretrained(path: str | os.PathLike, revision: str | None = None,
                        subfolder: str | None = None) -> "TaskHead":
        """Load a head saved by :meth:`save_pretrained`: a folder, or a Hub repo id (+ ``revision``)."""
        from glotpool.hub import resolve_folder

        path = resolve_folder(path, revision, subfolder, what="task head")
        meta = ConfiguredModule._read_config(path, "head.json", "task head", ("task_type", "config"),
                                             "head.save_pretrained(path)")
        try:
            head = build_head(meta["task_type"], **dict(meta["config"]))
        except (TypeError, ValueError) as e:  # a hand-edited config: name the file
            raise ValueError(f"{path / 'head.json'}: {e}; restore the original file or re-save the head") from None
        head._load_weights(path / "head.safetensors", meta=meta)
        return head


@dataclass
class ClassifierConfig(HeadConfig):
    num_labels: int = 2
    class_weights: list[float] | None = None  # per-class loss weights (e.g. inverse frequency)
    dropout: float = 0.0


@_register
class SingleSentenceClassifier(TaskHead):
    """``logits = W z + b``."""

    task_type = "single"
    is_classification = True
    default_metric = "accuracy"
    Config = ClassifierConfig

    def __init__(self, dim: int, **options):
        super().__init__(dim, **options)
        c = self.config
        if c.num_labels < 2:
            raise ValueError(f"classification needs num_labels >= 2, got {c.num_labels}")
        self.dropout = nn.Dropout(c.dropout)
        self.linear = nn.Linear(self.feature_dim, c.num_labels)
        weights = torch.tensor(c.class_weights, dtype=torch.float32) if c.class_weights else None
        if weights is not None and weights.numel() != c.num_labels:
            raise ValueError(f"class_weights has {weights.numel()} entries for {c.num_labels} labels")
        self.register_buffer("class_weights", weights, persistent=False)

    @property
    def feature_dim(self) -> int:
        return self.config.dim

    def features(self, z1: Tensor, z2: Tensor | None) -> Tensor:
        return z1

    def forward(self, z1: Tensor, z2: Tensor | None = None) -> Tensor:
        return self.linear(self.dropout(self.features(z1, z2)))

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        w = self.class_weights.to(out.dtype) if self.class_weights is not None else None
        return F.cross_entropy(out, target, weight=w)


@dataclass
class PairClassifierConfig(ClassifierConfig):
    features: str = "concat"  # concat: [z1 ‖ z2]  |  full: [z1, z2, |z1 − z2|, z1 ∗ z2]


@_register
class PairClassifier(SingleSentenceClassifier):
    task_type = "pair"
    is_pair = True
    default_metric = "accuracy"
    Config = PairClassifierConfig

    def __init__(self, dim: int, **options):
        feats = options.get("features", "concat")
        if feats not in ("concat", "full"):
            raise ValueError(f"unknown pair features {feats!r}; use 'concat' or 'full'")
        super().__init__(dim, **options)

    @property
    def feature_dim(self) -> int:
        return self.config.dim * (2 if self.config.features == "concat" else 4)

    def features(self, z1: Tensor, z2: Tensor | None) -> Tensor:
        if z2 is None:
            raise ValueError("a pair classifier needs two sentences (text_col_2)")
        if self.config.features == "concat":
            return torch.cat([z1, z2], dim=-1)
        return torch.cat([z1, z2, (z1 - z2).abs(), z1 * z2], dim=-1)


@dataclass
class STSConfig(HeadConfig):
    loss: str = "mse"  # mse (cosine vs gold in [0, 1]) | cosent
    cosent_scale: float = 20.0


@_register
class STSHead(TaskHead):
    """Similarity regression: ``ŷ = cos(z1, z2)``; targets are gold scores rescaled to [0, 1] by the caller."""

    task_type = "sts"
    is_pair = True
    default_metric = "spearman"
    Config = STSConfig

    def __init__(self, dim: int, **options):
        super().__init__(dim, **options)
        if self.config.loss not in ("mse", "cosent"):
            raise ValueError(f"unknown sts loss {self.config.loss!r}; use 'mse' or 'cosent'")

    def forward(self, z1: Tensor, z2: Tensor | None = None) -> Tensor:
        return F.cosine_similarity(z1, z2, dim=-1)

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        if self.config.loss == "mse":
            return F.mse_loss(out, target.to(out.dtype))
        # CoSENT: for every pair (i, j) with gold_i > gold_j, penalise cos_j > cos_i.
        diff = (out[None, :] - out[:, None]) * self.config.cosent_scale  # [i, j] = cos_j - cos_i
        valid = target[:, None] > target[None, :]
        diff = diff.masked_fill(~valid, float("-inf"))
        return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)


@dataclass
class RetrievalConfig(HeadConfig):
    temperature: float = 0.05  # the fixed T, or the initial T when learned
    learn_temperature: bool = False  # learn log(1/T) (CLIP-style; 1/T capped at 100)


@_register
class ContrastiveHead(TaskHead):
    """Symmetric InfoNCE with in-batch negatives: ``S = cos(q_i, d_j) / T``, CE on rows and on columns.

    With hard negatives ``z3`` (one per row, e.g. the contradiction of an NLI premise) each query also scores every
    row's negative: ``S = [cos(q, d) | cos(q, n)] / T`` is ``[B, 2B]``; the query->document CE runs over all 2B
    candidates, the document->query CE over the B queries (a negative is no query)."""

    task_type = "retrieval"
    is_pair = True
    default_metric = "mrr@10"
    Config = RetrievalConfig

    def __init__(self, dim: int, **options):
        super().__init__(dim, **options)
        if not self.config.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.config.temperature}")
        if self.config.learn_temperature:
            self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.config.temperature)))

    @property
    def scale(self) -> Tensor | float:
        """``1 / T`` (a tensor when learned)."""
        if self.config.learn_temperature:
            return self.log_scale.clamp(max=math.log(100.0)).exp()
        return 1.0 / self.config.temperature

    def forward(self, z1: Tensor, z2: Tensor | None = None, z3: Tensor | None = None) -> Tensor:
        q, d = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
        if z3 is not None:
            d = torch.cat([d, F.normalize(z3, dim=-1)])
        return q @ d.T * self.scale  # [B, B] or [B, 2B]

    def loss(self, out: Tensor, target: Tensor | None = None) -> Tensor:
        b = out.shape[0]
        labels = torch.arange(b, device=out.device)
        return (F.cross_entropy(out, labels) + F.cross_entropy(out[:, :b].T, labels)) / 2


TASK_TYPES = tuple(HEADS)  # ("single", "pair", "sts", "retrieval")


def head_class(task_type: str) -> type[TaskHead]:
    """The head class of a task type (its ``is_pair``, ``is_classification``, ``default_metric``)."""
    if task_type not in HEADS:
        raise ValueError(f"unknown task type {task_type!r}; valid: {', '.join(TASK_TYPES)}")
    return HEADS[task_type]


def default_metric(task_type: str) -> str:
    return head_class(task_type).default_metric


def build_head(task_type: str, dim: int, **options) -> TaskHead:
    return head_class(task_type)(dim, **options)


__all__ = ["TASK_TYPES", "HEADS", "head_class", "default_metric", "TaskHead", "SingleSentenceClassifier", "PairClassifier", "STSHead", "ContrastiveHead",
           "build_head"]
