"""Data layer: text datasets and readers, seeded splits, task presets, the offline-corpus fetcher, stress data.

    datasets.py   TextDataset, read_table (CSV / TSV / JSONL)
    splits.py     split_dataset, subsample, load_splits, encode_labels
    presets.py    TaskPreset, PRESETS (GLUE via `datasets`, offline corpora), load_task, TaskSource
    fetch.py      glotpool fetch-data: Pang & Lee and SNLI from package registries
    stressgen.py  the needle-among-distractors stress test
"""
from glotpool.data.datasets import TextDataset, from_hf_dataset, read_table
from glotpool.data.presets import GLUE_TASKS, PRESETS, LoadedTask, TaskPreset, TaskSource, load_hf_dataset, load_task
from glotpool.data.splits import encode_labels, load_splits, split_dataset, subsample

__all__ = ["LoadedTask", "TaskSource", "TextDataset", "read_table", "from_hf_dataset", "GLUE_TASKS", "PRESETS", "TaskPreset", "load_hf_dataset",
           "load_task", "encode_labels", "load_splits", "split_dataset", "subsample"]
