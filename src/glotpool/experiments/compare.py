"""``glotpool compare``: cache a task once, train every pooler with the same head, budget and seeds, and report.

    result = run_compare(CompareSettings(backbone="minilm", source=TaskSource("pang-lee")), out_dir="runs/compare-pang-lee")

Writes ``results.json`` (every run), ``results.md`` (mean ± std per pooler) and ``comparison.png`` (bar chart).
Runs are resumable (``runs/<pooler>/seed-<s>/run.json``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from glotpool.data import TaskSource
from glotpool.experiments.runs import PoolerSpec, fmt_mean_std, mean_std, run_one
from glotpool.experiments.scaffold import adapt_spec, prepare_experiment
from glotpool.io_utils import atomic_write_json, atomic_write_text
from glotpool.training.heads import default_metric
from glotpool.training.trainer import TrainConfig

DEFAULT_POOLERS = ("mean", "max", "cls", "adapool", "glot")


@dataclass
class CompareSettings:
    backbone: str = "minilm"
    source: TaskSource = field(default_factory=TaskSource)  # a preset task or local files
    poolers: tuple[str, ...] = DEFAULT_POOLERS  # PoolerSpec text; "cls" becomes "last" on decoders
    seeds: tuple[int, ...] = (0, 1, 2)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=1e-3, patience=4))
    max_length: int = 256
    layer: int = -1
    glot_defaults: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)
    cache_dir: str | None = None  # default OUT/cache
    show_progress: bool = True


def run_compare(settings: CompareSettings, out_dir: str | Path, backbone=None) -> dict:
    from glotpool.states.backbone import load_backbone

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    task = settings.source.load()
    backbone = backbone or load_backbone(settings.backbone, max_length=settings.max_length, layer=settings.layer)
    exp = prepare_experiment(backbone, task, settings.cache_dir or out_dir / "cache",
                             show_progress=settings.show_progress)
    specs = [adapt_spec(PoolerSpec.parse(text), backbone, settings.glot_defaults) for text in settings.poolers]
    cfg = replace(settings.train, show_progress=False)
    records = []
    bar = tqdm(total=len(specs) * len(settings.seeds), desc=f"compare {task.name}", unit="run",
               disable=not settings.show_progress or None)
    for spec in specs:
        for seed in settings.seeds:
            bar.set_postfix_str(f"{spec.label} seed {seed}")
            rec = run_one(spec, exp.cache, exp.data, cfg, seed=seed,
                          run_dir=out_dir / "runs" / spec.label / f"seed-{seed}",
                          head_options=settings.head_options, save_model=seed == settings.seeds[0])
            records.append(asdict(rec))
            bar.update(1)
    bar.close()
    metric = cfg.metric or default_metric(task.task_type)
    summary = []
    for spec in specs:
        vals = [r["test"][metric] for r in records if r["label"] == spec.label]
        m, s = mean_std(vals)
        rs = [r for r in records if r["label"] == spec.label]
        summary.append({"label": spec.label, "mean": m, "std": s, "n": len(vals), "values": vals,
                        "parameters": rs[0]["trainable_parameters"],
                        "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in rs) / len(rs)})
    result = {"task": task.name, "task_type": task.task_type, "metric": metric, "settings": asdict(settings),
              "backbone": backbone.fingerprint(), "sizes": {k: len(v) for k, v in task.splits.items()},
              "records": records, "summary": summary, "cache_seconds": exp.cache_seconds,
              "total_seconds": time.perf_counter() - t0}
    atomic_write_json(out_dir / "results.json", result)
    atomic_write_text(out_dir / "results.md", format_compare_table(result))
    from glotpool.experiments.report import plot_bars

    plot_bars(summary, out_dir / "comparison.png", metric,
              title=f"{task.name} with frozen {settings.backbone}: test {metric}, mean ± std over "
                    f"{len(settings.seeds)} seeds")
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
