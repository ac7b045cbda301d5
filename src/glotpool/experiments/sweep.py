"""``glotpool sweep``: a grid of GLOT settings (the paper's ablations) on one cache, ≥ 3 seeds each.

    run_sweep(SweepSettings(task="pang-lee", grid={"tau": [0.0, 0.2, 0.4, 0.6, 0.8], "conv": ["gat", "gcn", "gin"]}),
              out_dir="runs/sweep")

The task is a preset / local files (as in ``compare``) or ``stress:<ratio>`` for the stress-test data. Every run is
resumable. Writes ``runs.csv`` and ``runs.json`` (one tidy row per run, with graph density), ``summary.md`` (mean ±
std per grid point) and ``sweep_<key>.png`` (metric vs each swept value, marginalised over the other keys).
"""
from __future__ import annotations

import csv
import io
import itertools
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from glotpool.data import LoadedTask, TaskSource
from glotpool.data.stressgen import StressConfig, make_stress_data, stress_splits, token_counter
from glotpool.experiments.runs import PoolerSpec, fmt_mean_std, mean_std, parse_value, run_one
from glotpool.experiments.scaffold import graph_stats, prepare_experiment
from glotpool.io_utils import atomic_write_json, atomic_write_text
from glotpool.training.heads import default_metric
from glotpool.training.trainer import TrainConfig

# short grid names -> GLOTPooling options
ALIASES = {"layers": "num_layers", "hidden": "hidden_dim", "K": "num_layers", "F": "hidden_dim"}


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["tau=0.0,0.2", "conv=gat,gcn"]`` -> ``{"tau": [0.0, 0.2], "conv": ["gat", "gcn"]}``."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"bad grid item {item!r}; write key=v1,v2,... e.g. tau=0.2,0.4")
        key, values = item.split("=", 1)
        key = ALIASES.get(key.strip(), key.strip())
        vals = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not vals:
            raise ValueError(f"grid key {key!r} has no values")
        grid[key] = vals
    return grid


@dataclass
class SweepSettings:
    backbone: str = "minilm"
    source: TaskSource = field(default_factory=TaskSource)  # a preset task or local files ...
    stress_ratio: float | None = None  # ... or the stress test's data at this ratio (--task stress:<ratio>)
    pooler: str = "glot"
    base_options: dict = field(default_factory=dict)
    grid: dict = field(default_factory=lambda: {"tau": [0.0, 0.2, 0.4, 0.6, 0.8]})
    seeds: tuple[int, ...] = (0, 1, 2)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=1e-3, patience=4))
    cache_dir: str | None = None  # default OUT/cache
    show_progress: bool = True

    @property
    def task_name(self) -> str:
        return f"stress:{self.stress_ratio:g}" if self.stress_ratio is not None else (self.source.task or "local")


def _load(settings: SweepSettings, backbone) -> LoadedTask:
    if settings.stress_ratio is None:
        return settings.source.load()
    ratio = settings.stress_ratio
    data = make_stress_data(StressConfig(ratio=ratio), count_tokens=token_counter(backbone.tokenizer),
                            max_tokens=backbone.config.max_length)
    return LoadedTask(f"stress-{ratio:g}", "single", stress_splits(data, 0.2, 0))


def run_sweep(settings: SweepSettings, out_dir: str | Path, backbone=None) -> dict:
    from glotpool.states.backbone import load_backbone

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    backbone = backbone or load_backbone(settings.backbone)
    task = _load(settings, backbone)
    exp = prepare_experiment(backbone, task, settings.cache_dir or out_dir / "cache",
                             show_progress=settings.show_progress)
    cache, data, task_type = exp.cache, exp.data, task.task_type
    keys = list(settings.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(settings.grid[k] for k in keys))]
    cfg = replace(settings.train, show_progress=False)
    metric = cfg.metric or default_metric(task_type)
    rows = []
    bar = tqdm(total=len(points) * len(settings.seeds), desc="sweep", unit="run",
               disable=not settings.show_progress or None)  # None: off when stderr is not a terminal
    for point in points:
        label = ",".join(f"{k}={v}" for k, v in point.items())
        spec = PoolerSpec.of(settings.pooler, label=label, **{**settings.base_options, **point})
        spec = spec.resolved(cache, data["train"].idx1)
        graph = graph_stats(spec, cache, data["test"].idx1) if settings.pooler == "glot" else {}
        for seed in settings.seeds:
            bar.set_postfix_str(f"{label} seed {seed}")
            rec = run_one(spec, cache, data, cfg, seed=seed, run_dir=out_dir / "runs" / label / f"seed-{seed}")
            rows.append({**point, "seed": seed, "dev_" + metric: rec.dev.get(metric),
                         "test_" + metric: rec.test.get(metric) if rec.test else None,
                         "edges_per_token": graph.get("edges_per_token"), "density": graph.get("density"),
                         "best_epoch": rec.best_epoch, "parameters": rec.trainable_parameters,
                         "seconds_per_epoch": rec.seconds_per_epoch})
            bar.update(1)
    bar.close()
    result = {"settings": asdict(settings), "metric": metric, "rows": rows, "total_seconds": time.perf_counter() - t0}
    atomic_write_json(out_dir / "runs.json", result)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "runs.csv", buf.getvalue())
    atomic_write_text(out_dir / "summary.md", format_summary(rows, keys, metric, settings))
    from glotpool.experiments.report import plot_lines

    for key in keys:
        xs = settings.grid[key]
        per_x = [[r["test_" + metric] for r in rows if r[key] == x] for x in xs]
        stats = [mean_std(v) for v in per_x]
        plot_lines(xs, {settings.pooler: ([m for m, _ in stats], [s for _, s in stats])},
                   out_dir / f"sweep_{key}.png", xlabel=key, ylabel=f"test {metric} (%)",
                   title=f"{settings.task_name}: {metric} vs {key} (other keys and seeds pooled)")
    return result


def format_summary(rows: list[dict], keys: list[str], metric: str, settings: SweepSettings) -> str:
    lines = [f"# sweep — {settings.pooler} on {settings.task_name} (frozen {settings.backbone})", "",
             f"Test {metric} (%), mean ± std over seeds {list(settings.seeds)}; graph density = mean edges per token "
             "(self-loop included) on the test split.", "",
             "| " + " | ".join(keys) + f" | test {metric} | edges/token | params |",
             "|" + "---|" * (len(keys) + 3)]
    seen = []
    for r in rows:
        point = tuple(r[k] for k in keys)
        if point in seen:
            continue
        seen.append(point)
        group = [x for x in rows if tuple(x[k] for k in keys) == point]
        ept = group[0]["edges_per_token"]
        lines.append("| " + " | ".join(str(v) for v in point) + f" | {fmt_mean_std([g['test_' + metric] for g in group])}"
                     f" | {'' if ept is None else f'{ept:.1f}'} | {group[0]['parameters']:,} |")
    return "\n".join(lines) + "\n"
