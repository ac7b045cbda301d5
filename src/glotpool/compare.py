"""``glotpool compare``: cache a task once, train every pooler with the same head, budget and seeds, and report.

    result = run_compare(CompareSettings(backbone="minilm", task="pang-lee"), out_dir="runs/compare-pang-lee")

Writes ``results.json`` (every run), ``results.md`` (mean ± std per pooler) and ``comparison.png`` (bar chart).
Runs are resumable (``runs/<pooler>/seed-<s>/run.json``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from glotpool.cache import build_cache
from glotpool.data import PRESETS, TextDataset, load_splits, load_task
from glotpool.experiment import PoolerSpec, fmt_mean_std, mean_std, run_one
from glotpool.io_utils import atomic_write_json, atomic_write_text
from glotpool.train import DEFAULT_METRIC, TrainConfig, prepare_splits

DEFAULT_POOLERS = ("mean", "max", "cls", "adapool", "glot")


@dataclass
class CompareSettings:
    backbone: str = "minilm"
    task: str | None = "pang-lee"  # a preset name (glotpool.data.PRESETS), or None for local files
    data_dir: str | None = None
    # local files instead of a preset: train/dev/test files, or one file split by seeded ratio
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    data_file: str | None = None
    task_type: str = "single"
    text_col: str = "text"
    text_col_2: str | None = None
    label_col: str | None = "label"
    score_col: str | None = None
    poolers: tuple[str, ...] = DEFAULT_POOLERS  # PoolerSpec text; "cls" becomes "last" on decoders
    seeds: tuple[int, ...] = (0, 1, 2)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=1e-3, patience=4))
    max_train: int | None = None
    max_length: int = 256
    layer: int = -1
    glot_defaults: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)
    data_seed: int = 0
    show_progress: bool = True


def load_compare_data(s: CompareSettings) -> tuple[str, str, dict[str, TextDataset], tuple | None, tuple | None]:
    """-> (task name, task type, splits, label names, score range)."""
    if s.task:
        if s.task not in PRESETS:
            raise ValueError(f"unknown task {s.task!r}; presets: {', '.join(sorted(PRESETS))} (or give data files)")
        preset, splits = load_task(s.task, data_dir=s.data_dir, max_train=s.max_train, seed=s.data_seed)
        return preset.name, preset.task_type, splits, preset.label_names, preset.score_range
    if not (s.train_file or s.data_file):
        raise ValueError("give --task PRESET, or data files (--train/--dev/--test, or --data to split one file)")
    splits = load_splits(train=s.train_file, dev=s.dev_file, test=s.test_file, single=s.data_file,
                         seed=s.data_seed, text_col=s.text_col, text_col_2=s.text_col_2, label_col=s.label_col,
                         score_col=s.score_col)
    if s.max_train:
        from glotpool.data import subsample

        splits["train"] = subsample(splits["train"], s.max_train, seed=s.data_seed)
    name = Path(s.train_file or s.data_file).stem
    return name, s.task_type, splits, None, None


def run_compare(settings: CompareSettings, out_dir: str | Path, backbone=None) -> dict:
    from glotpool.backbone import load_backbone

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    task, task_type, splits, label_names, score_range = load_compare_data(settings)
    backbone = backbone or load_backbone(settings.backbone, max_length=settings.max_length, layer=settings.layer)
    texts = []
    for ds in splits.values():
        texts += ds.texts + (ds.texts2 or [])
    texts = list(dict.fromkeys(texts))
    tc = time.perf_counter()
    cache = build_cache(backbone, texts, out_dir / "cache", show_progress=settings.show_progress)
    cache_seconds = time.perf_counter() - tc
    data = prepare_splits(cache, splits, task_type, label_names=label_names, score_range=score_range)
    specs = []
    for text in settings.poolers:
        spec = PoolerSpec.parse(text)
        if spec.name == "cls" and backbone.is_decoder:
            spec = PoolerSpec("last", spec.options, "last")
        if spec.name == "glot" and settings.glot_defaults:
            spec = spec.with_options(**settings.glot_defaults)
        specs.append(spec)
    cfg = replace(settings.train, show_progress=False)
    records = []
    bar = tqdm(total=len(specs) * len(settings.seeds), desc=f"compare {task}", unit="run",
               disable=not settings.show_progress)
    for spec in specs:
        for seed in settings.seeds:
            bar.set_postfix_str(f"{spec.label} seed {seed}")
            rec = run_one(spec, cache, data, cfg, seed=seed, run_dir=out_dir / "runs" / spec.label / f"seed-{seed}",
                          head_options=settings.head_options, save_model=seed == settings.seeds[0])
            records.append(asdict(rec))
            bar.update(1)
    bar.close()
    metric = cfg.metric or DEFAULT_METRIC[task_type]
    summary = []
    for spec in specs:
        vals = [r["test"][metric] for r in records if r["label"] == spec.label]
        m, s = mean_std(vals)
        rs = [r for r in records if r["label"] == spec.label]
        summary.append({"label": spec.label, "mean": m, "std": s, "n": len(vals), "values": vals,
                        "parameters": rs[0]["trainable_parameters"],
                        "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in rs) / len(rs)})
    result = {"task": task, "task_type": task_type, "metric": metric, "settings": asdict(settings),
              "backbone": backbone.fingerprint(), "sizes": {k: len(v) for k, v in splits.items()},
              "records": records, "summary": summary, "cache_seconds": cache_seconds,
              "total_seconds": time.perf_counter() - t0}
    atomic_write_json(out_dir / "results.json", result)
    atomic_write_text(out_dir / "results.md", format_compare_table(result))
    from glotpool.report import plot_bars

    plot_bars(summary, out_dir / "comparison.png", metric,
              title=f"{task} with frozen {settings.backbone}: test {metric}, mean ± std over {len(settings.seeds)} seeds")
    return result


def format_compare_table(result: dict) -> str:
    s = result["settings"]
    sizes = result["sizes"]
    best = max(r["mean"] for r in result["summary"])
    lines = [f"# {result['task']} — frozen {s['backbone']}", "",
             f"Test {result['metric']} (%), mean ± std over seeds {list(s['seeds'])}; same head and budget for all "
             f"(epochs ≤ {s['train']['epochs']}, lr {s['train']['lr']}, early stopping on dev); splits "
             + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".", "",
             "| pooler | test " + result["metric"] + " | trainable params | s/epoch |", "|---|---|---|---|"]
    for r in result["summary"]:
        text = fmt_mean_std(r["values"])
        if r["mean"] == best:
            text = f"**{text}**"
        lines.append(f"| {r['label']} | {text} | {r['parameters']:,} | {r['seconds_per_epoch']:.2f} |")
    return "\n".join(lines) + "\n"
