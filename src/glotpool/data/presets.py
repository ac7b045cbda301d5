"""Named tasks: GLUE through Hugging Face ``datasets`` and the offline corpora, each with its loader and metric."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


from glotpool.data.datasets import TextDataset, _columns_to_dataset, read_table
from glotpool.data.fetch import default_data_dir
from glotpool.data.splits import dev_fraction_for, load_splits, split_dataset, subsample

# ----------------------------------------------------------------------------------------------- presets


@dataclass
class TaskPreset:
    """How to load a named task and how to score it.

    ``splits`` maps our split names to the source's (``{"train": "train", "test": "validation"}``); a missing
    ``dev`` is carved from train (seeded, stratified; ``dev_fraction`` capped at ``dev_max``).
    """

    name: str
    task_type: str  # "single" | "pair" | "sts" | "retrieval"
    metric: str  # main metric (model selection / headline): a key of metrics.compute_metrics' dict
    metrics: tuple[str, ...] = ()  # everything worth reporting
    num_labels: int = 0  # 0 for sts / retrieval
    label_names: tuple[str, ...] | None = None  # class order: id i = label_names[i]
    hf_path: str | None = None
    hf_name: str | None = None
    text_col: str = "sentence"
    text_col_2: str | None = None
    text_col_3: str | None = None  # retrieval: a hard-negative column
    label_col: str | None = "label"
    score_col: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "validation"})
    dev_fraction: float = 0.1
    dev_max: int = 5000
    score_range: tuple[float, float] | None = None  # sts: (min, max) of gold scores
    description: str = ""


def _glue(name, text_col, text_col_2, label_names, metric, metrics, test_split="validation", desc=""):
    return TaskPreset(name=name, task_type="pair" if text_col_2 else "single", metric=metric, metrics=metrics,
                      num_labels=len(label_names), label_names=tuple(label_names), hf_path="nyu-mll/glue",
                      hf_name=name, text_col=text_col, text_col_2=text_col_2,
                      splits={"train": "train", "test": test_split}, description=desc)


_CLS = ("accuracy", "macro_f1", "mcc")
PRESETS: dict[str, TaskPreset] = {
    "cola": _glue("cola", "sentence", None, ["unacceptable", "acceptable"], "mcc", _CLS,
                  desc="GLUE CoLA: grammatical acceptability"),
    "sst2": _glue("sst2", "sentence", None, ["negative", "positive"], "accuracy", _CLS + ("f1",),
                  desc="GLUE SST-2: binary sentiment"),
    "mrpc": _glue("mrpc", "sentence1", "sentence2", ["not_equivalent", "equivalent"], "f1", ("f1",) + _CLS,
                  desc="GLUE MRPC: paraphrase"),
    "qqp": _glue("qqp", "question1", "question2", ["not_duplicate", "duplicate"], "f1", ("f1",) + _CLS,
                 desc="GLUE QQP: duplicate questions"),
    "mnli": _glue("mnli", "premise", "hypothesis", ["entailment", "neutral", "contradiction"], "accuracy", _CLS,
                  test_split="validation_matched", desc="GLUE MNLI: NLI, tested on validation_matched"),
    "qnli": _glue("qnli", "question", "sentence", ["entailment", "not_entailment"], "accuracy", _CLS,
                  desc="GLUE QNLI: question-answer entailment"),
    "rte": _glue("rte", "sentence1", "sentence2", ["entailment", "not_entailment"], "accuracy", _CLS,
                 desc="GLUE RTE: entailment"),
    "wnli": _glue("wnli", "sentence1", "sentence2", ["not_entailment", "entailment"], "accuracy", _CLS,
                  desc="GLUE WNLI: Winograd NLI"),
    "stsb": TaskPreset(name="stsb", task_type="sts", metric="spearman", metrics=("spearman", "pearson"),
                       hf_path="nyu-mll/glue", hf_name="stsb", text_col="sentence1", text_col_2="sentence2",
                       label_col=None, score_col="label", score_range=(0.0, 5.0),
                       description="GLUE STS-B: similarity scores 0-5"),
    # Offline presets: files written by scripts/fetch_data.py (glotpool.data.fetch) under the data dir.
    "pang-lee": TaskPreset(name="pang-lee", task_type="single", metric="accuracy", metrics=_CLS + ("f1",),
                           num_labels=2, label_names=("negative", "positive"), text_col="text",
                           splits={}, description="Pang & Lee movie-review sentences (4000, balanced), split "
                           "80/10/10 seeded+stratified from DATA_DIR/pang-lee/sentences.csv"),
    "snli": TaskPreset(name="snli", task_type="pair", metric="accuracy", metrics=_CLS, num_labels=3,
                       label_names=("entailment", "neutral", "contradiction"), text_col="premise",
                       text_col_2="hypothesis", splits={"train": "train.jsonl", "test": "test.jsonl"},
                       description="SNLI: first 100k train pairs (dev = 10% of premises, none shared) + official "
                       "test, from DATA_DIR/snli/{train,test}.jsonl"),
    "nli-pairs": TaskPreset(name="nli-pairs", task_type="retrieval", metric="mrr@10",
                            metrics=("mrr@10", "recall@1", "recall@10"), text_col="premise", text_col_2="positive",
                            text_col_3="negative", label_col=None,
                            splits={"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"},
                            description="SNLI triplets (premise, entailed hypothesis, contradiction of the same "
                            "premise as hard negative), deduplicated: 31,987 train / 1,175 dev (1,000 premises, none "
                            "in train) / 3,167 test (official test), from DATA_DIR/nli-pairs/ (glotpool fetch-data)"),
}
GLUE_TASKS = tuple(k for k, p in PRESETS.items() if p.hf_path == "nyu-mll/glue")


def _hf_load(path: str, name: str | None, data_files: Any, load_kwargs: dict):
    try:
        import datasets
    except ImportError as e:
        raise ImportError("loading Hugging Face datasets needs `pip install datasets` (extra: glotpool[hf])") from e
    local = Path(path)
    if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
        return datasets.load_from_disk(str(local))  # a folder written by save_to_disk
    return datasets.load_dataset(path, name, data_files=data_files, **load_kwargs)


def load_hf_dataset(
    path: str,
    name: str | None = None,
    *,
    data_files: Any = None,
    split_map: Mapping[str, str],
    text_col: str,
    text_col_2: str | None = None,
    label_col: str | None = None,
    score_col: str | None = None,
    label_names: Sequence[str] | None = None,
    **load_kwargs: Any,
) -> dict[str, TextDataset]:
    """Load splits with ``datasets``: a hub id (``load_dataset(path, name)``), a builder with ``data_files``
    (``load_dataset("json", data_files=...)``) or a local folder written by ``save_to_disk``.

    ``split_map`` maps our split names to source split names, e.g. ``{"train": "train", "test": "validation"}``.
    ``label_names`` turns integer class ids into names (a ``ClassLabel`` column's names are used when not given).
    """
    dd = _hf_load(path, name, data_files, load_kwargs)
    if not hasattr(dd, "keys"):  # a single Dataset (save_to_disk of one split)
        dd = {"train": dd}
    out = {}
    for ours, theirs in split_map.items():
        if theirs not in dd:
            raise ValueError(f"{path}{'/' + name if name else ''}: no split {theirs!r}; splits are {list(dd.keys())}")
        d = dd[theirs]
        names = label_names
        if names is None and label_col is not None:
            feat = d.features.get(label_col)
            names = getattr(feat, "names", None)
        wanted = [c for c in (text_col, text_col_2, label_col, score_col) if c is not None and c in d.column_names]
        # one arrow -> python conversion per column (iterating d[col] row by row is ~25x slower)
        cols = {c: None for c in d.column_names} | d.select_columns(wanted).to_dict()
        out[ours] = _columns_to_dataset(cols, len(d), source=f"{path}[{theirs}]",
                                        text_col=text_col, text_col_2=text_col_2, label_col=label_col,
                                        score_col=score_col, label_names=names)
    return out


def _carve_dev(splits: dict[str, TextDataset], preset: TaskPreset, seed: int) -> dict[str, TextDataset]:
    if "dev" in splits:
        return splits
    tr = splits["train"]
    frac = min(dev_fraction_for(len(tr), preset.dev_fraction), preset.dev_max / len(tr))
    splits["train"], splits["dev"], _ = split_dataset(tr, (1 - frac, frac, 0.0), seed=seed)
    return splits


def load_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    max_train: int | None = None,
    seed: int = 0,
    local_path: str | os.PathLike | None = None,
) -> tuple[TaskPreset, dict[str, TextDataset]]:
    """Load a preset task as ``(preset, {"train", "dev", "test"})``; class labels are the preset's names.

    * GLUE (``cola sst2 stsb mrpc qqp mnli qnli rte wnli``): ``datasets.load_dataset("nyu-mll/glue", name)``, or
      ``local_path`` = a folder written by ``DatasetDict.save_to_disk`` with the same splits/columns (offline).
      GLUE test labels are hidden (-1), so **test = the validation split** (MNLI: ``validation_matched``) and
      **dev = a seeded, stratified 10% of train** (at most 5000 rows); train is the rest.
    * ``pang-lee``: ``DATA_DIR/pang-lee/sentences.csv`` shuffled and split 80/10/10 (seeded, stratified).
    * ``snli``: ``DATA_DIR/snli/train.jsonl`` (dev = 10% of its premises, grouped by premise text - which keeps each
      captionID together too - so no premise is in both train and dev)
      and ``DATA_DIR/snli/test.jsonl``.

    ``DATA_DIR`` = ``data_dir`` or ``$GLOTPOOL_DATA`` or ``./data``; fill it with ``glotpool fetch-data``.
    ``max_train`` keeps a seeded (stratified) subsample of train; dev/test are untouched.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown task {name!r}; presets: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if preset.hf_path is not None:
        src = str(local_path) if local_path is not None else preset.hf_path
        splits = load_hf_dataset(src, None if local_path is not None else preset.hf_name, split_map=preset.splits,
                                 text_col=preset.text_col, text_col_2=preset.text_col_2, label_col=preset.label_col,
                                 score_col=preset.score_col, label_names=preset.label_names)
        splits = _carve_dev(splits, preset, seed)
    else:
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        folder = root / name
        need = ["sentences.csv"] if name == "pang-lee" else list(preset.splits.values())
        missing = [f for f in need if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {missing}; run `glotpool fetch-data --data-dir "
                                    f"{root} --only {name}` (or set GLOTPOOL_DATA)")
        if name == "nli-pairs":  # train rows grouped by premise: the retrieval sampler keeps a premise to one batch
            kw = dict(text_col="premise", text_col_2="positive", text_col_3="negative", group_col="premise")
            splits = {k: read_table(folder / f, **kw) for k, f in preset.splits.items()}
        elif name == "pang-lee":
            ds = read_table(folder / "sentences.csv", text_col="text", label_col="label")
            tr, dv, te = split_dataset(ds, (0.8, 0.1, 0.1), seed=seed)
            splits = {"train": tr, "dev": dv, "test": te}
        else:  # snli
            kw = dict(text_col="premise", text_col_2="hypothesis", label_col="label")
            # group by premise text: stricter than captionID (22 premises recur under two captionIDs)
            train = read_table(folder / "train.jsonl", group_col="premise", **kw)
            tr, dv, _ = split_dataset(train, (0.9, 0.1, 0.0), seed=seed)
            splits = {"train": tr, "dev": dv, "test": read_table(folder / "test.jsonl", **kw)}
        for split, ds in splits.items():
            if preset.label_names is None:
                continue
            bad = sorted({y for y in ds.labels} - set(preset.label_names), key=str)
            if bad:
                raise ValueError(f"{folder} ({split}): labels {bad} are not among {list(preset.label_names)}; "
                                 "re-run `glotpool fetch-data`")
    if max_train is not None:
        splits["train"] = subsample(splits["train"], max_train, seed=seed)
    return preset, {k: splits[k] for k in ("train", "dev", "test")}


# ----------------------------------------------------------------------------------------------- task sources


@dataclass
class LoadedTask:
    """A task ready to cache: its name, task type, splits and (for presets) label order and score range."""

    name: str
    task_type: str
    splits: dict[str, TextDataset]
    label_names: tuple[str, ...] | None = None
    score_range: tuple[float, float] | None = None


@dataclass
class TaskSource:
    """Where a training command's data comes from: a preset ``task``, or local files (``train_file`` [+ ``dev_file``]
    [+ ``test_file``], or one ``data_file`` split 80/10/10). Every training command loads its data through this."""

    task: str | None = "pang-lee"  # a preset name (PRESETS), or None for local files
    data_dir: str | None = None  # folder of fetched corpora (presets pang-lee / snli)
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    data_file: str | None = None
    task_type: str = "single"  # local files only: presets know their own
    text_col: str = "text"
    text_col_2: str | None = None
    text_col_3: str | None = None  # retrieval: hard negatives
    label_col: str | None = "label"
    score_col: str | None = None
    max_train: int | None = None  # seeded (stratified) subsample of train
    max_dev: int | None = None  # ... of dev: for backbones whose caching is the cost (dev is read every epoch)
    max_test: int | None = None  # ... of test: a smaller, still untouched test set (say so where it is reported)
    data_seed: int = 0  # seed of the split (and of the subsample)

    def load(self) -> LoadedTask:
        task = self._load()
        for split, n in (("dev", self.max_dev), ("test", self.max_test)):
            if n is None:
                continue
            if split not in task.splits:
                raise ValueError(f"max_{split}={n} (--max-{split}) caps a {split} split, and {task.name} has none; "
                                 f"drop it or give a {split} file")
            task.splits[split] = subsample(task.splits[split], n, seed=self.data_seed)
        return task

    def _load(self) -> LoadedTask:
        if self.task:
            if self.task not in PRESETS:
                raise ValueError(f"unknown task {self.task!r}; presets: {', '.join(sorted(PRESETS))} (or give data "
                                 "files: --train/--dev/--test, or --data)")
            preset, splits = load_task(self.task, data_dir=self.data_dir, max_train=self.max_train,
                                       seed=self.data_seed)
            return LoadedTask(preset.name, preset.task_type, splits, preset.label_names, preset.score_range)
        if not (self.train_file or self.data_file):
            raise ValueError("give --task PRESET, or data files (--train/--dev/--test, or --data to split one file)")
        if self.score_col and self.task_type != "sts":
            raise ValueError("--score-col is for --task-type sts")
        if self.text_col_3 and self.task_type != "retrieval":
            raise ValueError("--text-col-3 (hard negatives) is for --task-type retrieval")
        no_label = self.score_col or self.task_type == "retrieval"  # contrastive pairs have no label column
        splits = load_splits(train=self.train_file, dev=self.dev_file, test=self.test_file, single=self.data_file,
                             seed=self.data_seed, text_col=self.text_col, text_col_2=self.text_col_2,
                             label_col=None if no_label else self.label_col, score_col=self.score_col,
                             **({"text_col_3": self.text_col_3} if self.text_col_3 else {}))
        if self.max_train:
            splits["train"] = subsample(splits["train"], self.max_train, seed=self.data_seed)
        return LoadedTask(Path(self.train_file or self.data_file).stem, self.task_type, splits)
