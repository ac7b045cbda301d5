"""MTEB (v2) integration: evaluate a frozen backbone + trained pooler with the real ``mteb.evaluate`` pipeline.

    enc = Encoder.from_pretrained("models/glot-msmarco")           # or Encoder(load_backbone("minilm"), pooler)
    evaluate_mteb(enc, task_names=["STSBenchmark", "Banking77Classification"])   # downloads the tasks (online)

    # offline: real MTEB task types over local data (no hub access)
    task = classification_task(train_ds, test_ds)                  # glotpool TextDataset splits
    evaluate_mteb(enc, tasks=[task, sts_task(pairs_ds, 0, 5)])     # {"LocalClassification": {...}, ...}

:class:`MTEBEncoder` implements MTEB's encoder protocol (``encode(DataLoader[BatchedInput], *, task_metadata,
hf_split, hf_subset, prompt_type, **kwargs)``): it gathers the batch texts and runs ``Encoder.encode`` (length-sorted
batches, progress bar). Decoders need nothing special: a ``last`` / GLOT pooler reads the mask, so the last *real*
token is found for left- or right-padded batches. Similarity is cosine.

Training for MTEB follows the paper: contrastive InfoNCE on (query, positive) pairs with in-batch negatives, i.e.
the ``retrieval`` task type of :mod:`glotpool.training.trainer` (``ContrastiveHead``)::

    splits = prepare_splits(cache, {"train": pairs_tr, "dev": pairs_dev}, task_type="retrieval")  # texts, texts2
    head = build_head("retrieval", pooler.out_dim, temperature=0.05)
    train_pooler(pooler, head, cache, splits, TrainConfig(batch_size=64))   # dev metric: mrr@10

or, inside sentence-transformers, :func:`glotpool.integrations.sentence_transformers.train_pooler_st` with
``loss="mnrl"`` (MultipleNegativesRankingLoss = the same in-batch InfoNCE).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from glotpool.data import TextDataset
from glotpool.encoder import Encoder

log = logging.getLogger(__name__)
_EMPTY_TEXT = "."  # MTEB corpora hold a few empty texts; the encoder refuses "", so they become one neutral token


class MTEBEncoder(AbsEncoder):
    """MTEB encoder around a glotpool :class:`~glotpool.encoder.Encoder` (backbone + trained pooler).

    ``name`` must look like ``"org/model"`` (MTEB's rule; it names the result folder); default
    ``glotpool/<backbone>-<pooler>``. ``revision`` defaults to the first 12 hex digits of the backbone's weights
    hash, so results of different weights never share a cache entry.
    """

    def __init__(self, encoder: Encoder, *, name: str | None = None, revision: str | None = None,
                 batch_size: int = 32, normalize: bool = False):
        if not isinstance(encoder, Encoder):
            raise ValueError(f"MTEBEncoder needs a glotpool Encoder, got {type(encoder).__name__}; build one with "
                             "Encoder(load_backbone(...), pooler) or Encoder.from_pretrained(dir)")
        self.model = encoder
        self.batch_size = batch_size
        self.normalize = normalize
        bb = encoder.backbone
        short = Path(str(bb.config.name_or_path)).name or "backbone"
        name = name or f"glotpool/{short}-{encoder.pooler.name}"
        if "/" not in name:
            raise ValueError(f"MTEB model names look like 'org/model', got {name!r}")
        fp = bb.fingerprint()
        revision = revision or str(fp.get("weights_sha256") or fp.get("revision") or "unknown")[:12]
        n_params = sum(p.numel() for p in bb.model.parameters()) + sum(p.numel() for p in encoder.pooler.parameters())
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": name, "revision": revision, "embed_dim": encoder.dim, "max_tokens": bb.config.max_length,
            "n_parameters": n_params, "similarity_fn_name": ScoringFunction.COSINE, "framework": ["PyTorch"],
            "modalities": ["text"], "open_weights": True, "loader": load_mteb_model,
            "adapted_from": (encoder.backbone_reference().get("hub_id") or None)})

    def encode(self, inputs, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        """``inputs``: MTEB's DataLoader of ``{"text": [...]}`` batches -> ``[N, dim]`` float32, input order."""
        texts = [t for batch in inputs for t in batch["text"]]
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            log.warning("%s/%s: %d empty text(s) encoded as %r", task_metadata.name, hf_split, len(empty),
                        _EMPTY_TEXT)
            for i in empty:
                texts[i] = _EMPTY_TEXT
        return self.model.encode(texts, batch_size=int(kwargs.get("batch_size") or self.batch_size),
                                 normalize=self.normalize, show_progress=bool(kwargs.get("show_progress_bar", True)),
                                 convert_to="numpy")


def load_mteb_model(model_name: str, revision: str | None = None, *, path: str | None = None,
                    model_revision: str | None = None, device: str | None = None, **kwargs) -> MTEBEncoder:
    """MTEB's loader for a glotpool model (``ModelMeta.loader``): the encoder at ``path`` (a folder or a Hub repo
    id; default ``model_name``) -> an :class:`MTEBEncoder` named ``model_name``. ``revision``: MTEB's result
    revision; ``model_revision``: the Hub revision of ``path``."""
    enc = Encoder.from_pretrained(path or model_name, device=device or "auto", revision=model_revision)
    return MTEBEncoder(enc, name=model_name, revision=revision, **kwargs)


def mteb_model_meta(name_or_path: str | os.PathLike, *, name: str | None = None, revision: str | None = None,
                    register: bool = True) -> ModelMeta:
    """A ``ModelMeta`` whose loader rebuilds the glotpool model at ``name_or_path`` (folder or Hub repo id), so
    ``mteb.get_model(name)`` works (``register=True`` adds it to MTEB's model registry).

    ``name``: the MTEB name ('org/model'), default the repo id, or ``glotpool/<folder name>`` for a folder.
    ``revision`` (Hub revision of a repo id) is also MTEB's revision; a folder's is its weights hash.
    """
    import json

    from mteb.models.model_implementations import MODEL_REGISTRY

    from glotpool.hub import resolve_folder

    folder = resolve_folder(name_or_path, revision, what="encoder")
    meta = json.loads((folder / "encoder.json").read_text())
    local = Path(name_or_path).expanduser().is_dir()
    name = name or (f"glotpool/{Path(name_or_path).resolve().name}" if local else str(name_or_path))
    if "/" not in name:
        raise ValueError(f"MTEB model names look like 'org/model', got {name!r}")
    ref = meta.get("backbone") or {}
    mm = ModelMeta.create_empty(overwrites={
        "name": name, "revision": revision or str(ref.get("weights_sha256") or "unknown")[:12],
        "embed_dim": meta.get("dim"), "max_tokens": ref.get("max_length"),
        "similarity_fn_name": ScoringFunction.COSINE, "framework": ["PyTorch"], "modalities": ["text"],
        "open_weights": True, "loader": load_mteb_model, "adapted_from": ref.get("hub_id"),
        "loader_kwargs": {"path": str(folder if local else name_or_path), "model_revision": revision}})
    if register:
        MODEL_REGISTRY[name] = mm
    return mm


class PrecomputedEncoder(AbsEncoder):
    """MTEB encoder around any ``embed(texts) -> [N, dim]`` function (e.g. a pooler over cached token states, see
    :func:`glotpool.experiments.zeroshot.cache_embedder`): MTEB's protocol without running the backbone again."""

    def __init__(self, embed, dim: int, *, name: str = "glotpool/precomputed", revision: str = "local"):
        if "/" not in name:
            raise ValueError(f"MTEB model names look like 'org/model', got {name!r}")
        self.embed = embed
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": name, "revision": revision, "embed_dim": dim, "similarity_fn_name": ScoringFunction.COSINE,
            "framework": ["PyTorch"], "modalities": ["text"], "open_weights": True})

    def encode(self, inputs, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        texts = [t if isinstance(t, str) and t.strip() else _EMPTY_TEXT for batch in inputs for t in batch["text"]]
        return np.asarray(self.embed(texts), dtype=np.float32)


def local_mteb_scores(embed, dim: int, probe_train: TextDataset, probe_test: TextDataset, pairs: TextDataset,
                      min_score: float, max_score: float, *, name: str = "glotpool/precomputed") -> dict[str, float]:
    """The real ``mteb.evaluate`` on local data: :func:`classification_task` (probe split; main score accuracy)
    and :func:`sts_task` (pairs; cosine Spearman) -> ``{"mteb_classification_acc", "mteb_sts_spearman"}``."""
    tasks = [classification_task(probe_train, probe_test, name="LocalClassification"),
             sts_task(pairs, min_score, max_score, name="LocalSTS")]
    res = evaluate_mteb(PrecomputedEncoder(embed, dim, name=name), tasks=tasks, show_progress=False)
    return {"mteb_classification_acc": res["LocalClassification"]["main_score"],
            "mteb_sts_spearman": res["LocalSTS"]["main_score"]}


def as_mteb_model(model, **kwargs) -> AbsEncoder:
    """An :class:`MTEBEncoder` from an ``Encoder``, an encoder folder, or an MTEB encoder such as ``MTEBEncoder``
    or :class:`PrecomputedEncoder` (returned as is)."""
    if isinstance(model, AbsEncoder):
        return model
    if isinstance(model, (str, os.PathLike)):
        model = Encoder.from_pretrained(model)
    return MTEBEncoder(model, **kwargs)


def evaluate_mteb(model, task_names: Sequence[str] | None = None, tasks: Sequence | None = None, *,
                  batch_size: int = 32, output_folder: str | os.PathLike | None | bool = None,
                  show_progress: bool = True, **encoder_kwargs) -> dict[str, dict]:
    """Run ``mteb.evaluate`` and return ``{task name: {"main_score", "main_score_name", "scores"}}``.

    ``task_names`` are MTEB task names (``mteb.get_tasks``; their data is downloaded from the hub on first use);
    ``tasks`` are task objects, e.g. the offline :func:`classification_task` / :func:`sts_task`. Results go to MTEB's
    results cache (``~/.cache/mteb`` or ``$MTEB_CACHE``) by default, under the model's MTEB name; ``output_folder``
    names another cache folder, ``output_folder=False`` writes nothing. Scores are always recomputed;
    ``main_score`` is MTEB's own ``TaskResult.get_score()``.
    """
    import mteb

    if not task_names and not tasks:
        raise ValueError("give task_names (MTEB task names, e.g. ['STSBenchmark']) or tasks (task objects)")
    all_tasks = list(tasks or [])
    if task_names:
        all_tasks += list(mteb.get_tasks(tasks=list(task_names)))
    wrapper = as_mteb_model(model, batch_size=batch_size, **encoder_kwargs)
    cache = (None if output_folder is False else mteb.ResultCache() if output_folder is None else
             mteb.ResultCache(cache_path=str(output_folder)))
    result = mteb.evaluate(wrapper, all_tasks, cache=cache, overwrite_strategy="always",
                           encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress},
                           show_progress_bar=show_progress)
    main_names = {t.metadata.name: t.metadata.main_score for t in all_tasks}
    out = {}
    for tr in result.task_results:
        try:
            main = float(tr.get_score())
        except (KeyError, ValueError):
            main = float("nan")
        out[tr.task_name] = {"main_score": main, "main_score_name": main_names.get(tr.task_name), "scores": tr.scores}
    return out


# ----------------------------------------------------------------------------------------------------------------
# offline tasks: MTEB's own evaluation logic over local data

_META = dict(description="A glotpool task built from local files (offline).",
             reference="https://github.com/embeddings-benchmark/mteb", dataset={"path": "local", "revision": "local"},
             category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], date=("2000-01-01", "2000-01-01"),
             dialect=[], domains=[], task_subtypes=[], license="not specified", annotations_creators="derived",
             modalities=["text"], sample_creation="found", bibtex_citation="")


def _local_task(base: type, name: str, main_score: str, task_type: str, attrs: dict):
    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        if self.dataset is None:
            raise ValueError(f"task {name!r} has no data: it is built in memory by glotpool")
        self.data_loaded = True

    meta = TaskMetadata(name=name, type=task_type, main_score=main_score, **_META)
    cls = type(f"Glotpool{task_type}_{name}", (base,), {"metadata": meta, "load_data": load_data, **attrs})
    return cls()


def classification_task(train: TextDataset, test: TextDataset, *, name: str = "LocalClassification",
                        samples_per_label: int | None = None, n_experiments: int = 3, seed: int = 42):
    """An MTEB ``AbsTaskClassification`` (logistic regression on frozen vectors, main score accuracy).

    ``samples_per_label``: training examples per class in each experiment (MTEB's undersampling); None = all of
    ``train``. Labels may be strings; they are mapped to ids in sorted order.
    """
    from datasets import Dataset, DatasetDict

    for split, ds in (("train", train), ("test", test)):
        if len(ds) == 0 or ds.labels is None:
            raise ValueError(f"classification_task: the {split} split needs texts and labels")
    names = sorted({str(y) for y in train.labels})
    index = {y: i for i, y in enumerate(names)}
    unknown = sorted({str(y) for y in test.labels} - set(index))
    if unknown:
        raise ValueError(f"classification_task: test labels {unknown} never occur in train ({names})")
    counts = np.bincount([index[str(y)] for y in train.labels], minlength=len(names))
    spl = int(counts.max()) if samples_per_label is None else int(samples_per_label)
    task = _local_task(AbsTaskClassification, name, "accuracy", "Classification",
                       {"samples_per_label": spl, "n_experiments": int(n_experiments), "seed": seed})
    task.dataset = DatasetDict({
        s: Dataset.from_dict({"text": list(ds.texts), "label": [index[str(y)] for y in ds.labels]})
        for s, ds in (("train", train), ("test", test))})
    task.data_loaded = True
    task.label_names = names
    return task


def sts_task(pairs: TextDataset, min_score: float, max_score: float, *, name: str = "LocalSTS"):
    """An MTEB ``AbsTaskSTS`` over ``pairs`` (texts, texts2, float scores): cosine vs gold, main score
    ``cosine_spearman``."""
    from datasets import Dataset, DatasetDict

    if pairs.texts2 is None or pairs.labels is None or len(pairs) < 2:
        raise ValueError("sts_task needs at least 2 pairs with texts, texts2 and scores (labels)")
    scores = [float(s) for s in pairs.labels]
    if not all(min_score <= s <= max_score for s in scores):
        raise ValueError(f"sts_task: scores must lie in [{min_score}, {max_score}], got "
                         f"[{min(scores)}, {max(scores)}]")
    task = _local_task(AbsTaskSTS, name, "cosine_spearman", "STS", {"min_score": min_score, "max_score": max_score})
    task.dataset = DatasetDict({"test": Dataset.from_dict({"sentence1": list(pairs.texts),
                                                           "sentence2": list(pairs.texts2), "score": scores})})
    task.data_loaded = True
    return task


__all__ = ["MTEBEncoder", "PrecomputedEncoder", "as_mteb_model", "evaluate_mteb", "local_mteb_scores",
           "classification_task", "sts_task"]
