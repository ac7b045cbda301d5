"""``glotpool sweep``: a grid of GLOT settings (the paper's ablations) on one cache, ≥ 3 seeds each.

    run_sweep(SweepSettings(task="pang-lee", grid={"tau": [0.0, 0.2, 0.4, 0.6, 0.8], "conv": ["gat", "gcn", "gin"]}),
              out_dir="runs/sweep")

The task is a preset / local files (as in ``compare``) or ``stress:<ratio>`` for the stress-test data. Every grid
point is trained under ``compare``'s protocol (:mod:`glotpool.experiments.budgets`; by default ``converged``, with lr
× weight decay chosen on dev per point with the first seed) and tested against the best point by the same paired
test. Every run is resumable. Writes ``runs.csv`` and ``runs.json`` (one tidy row per run, with graph density and the
chosen hyperparameters), ``summary.md`` (mean ± std per grid point, dev score, Δ vs best, the dev-selected point) and
``sweep_<key>.png`` (metric vs each swept value, marginalised over the other keys).
"""
from __future__ import annotations

import csv
import io
import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from glotpool.data import LoadedTask, TaskSource
from glotpool.data.stressgen import StressConfig, make_stress_data, stress_splits, token_counter
from glotpool.experiments.budgets import describe, protocol, tune_and_run
from glotpool.experiments.compare import row_cells, significance_vs_best, summary_row
from glotpool.experiments.runs import PoolerSpec, mean_std, parse_value
from glotpool.experiments.scaffold import graph_stats, prepare_experiment
from glotpool.io_utils import atomic_write_json, atomic_write_text
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
    budget: str = "converged"  # converged | paper | fixed (glotpool.experiments.budgets), as in compare
    train: TrainConfig = field(default_factory=TrainConfig)  # "fixed": used as is; else device/batch size/precision
    train_grid: dict | None = None  # converged budget: lr × weight decay chosen per point on dev (None: the default)
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
    cache, data = exp.cache, exp.data
    keys = list(settings.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(settings.grid[k] for k in keys))]
    base, train_grid, metric = protocol(settings.budget, settings.train, settings.train_grid, task.task_type)
    rows, summary = [], []
    bar = tqdm(total=len(points), desc=f"sweep ({settings.budget})", unit="point",
               disable=not settings.show_progress or None)  # None: off when stderr is not a terminal
    for point in points:
        label = ",".join(f"{k}={v}" for k, v in point.items())
        bar.set_postfix_str(label)
        spec = PoolerSpec.of(settings.pooler, label=label, **{**settings.base_options, **point})
        spec = spec.resolved(cache, data["train"].idx1)
        graph = graph_stats(spec, cache, data["test"].idx1) if settings.pooler == "glot" else {}
        chosen, recs, dev_table = tune_and_run(spec, cache, data, base, train_grid, settings.seeds,
                                               out_dir / "runs" / label, save_model=False)
        for rec in recs:
            rows.append({**point, "seed": rec.seed, **chosen, "dev_" + metric: rec.dev.get(metric),
                         "test_" + metric: rec.test.get(metric) if rec.test else None,
                         "edges_per_token": graph.get("edges_per_token"), "density": graph.get("density"),
                         "best_epoch": rec.best_epoch, "parameters": rec.trainable_parameters,
                         "seconds_per_epoch": rec.seconds_per_epoch})
        summary.append({**summary_row(label, chosen, recs, dev_table, metric), "point": point,
                        "edges_per_token": graph.get("edges_per_token"), "density": graph.get("density")})
        bar.update(1)
    bar.close()
    significance = significance_vs_best(summary, data["test"].targets, metric)
    for row in summary:
        row.pop("predictions", None)
    selected = max(summary, key=lambda r: r["dev"])["label"]  # dev only; ties: the first point
    result = {"settings": asdict(settings), "task": settings.task_name, "metric": metric,
              "budget": {"name": settings.budget, "base": asdict(base), "grid": train_grid},
              "rows": rows, "summary": summary, "significance": significance, "dev_selected": selected,
              "total_seconds": time.perf_counter() - t0}
    atomic_write_json(out_dir / "runs.json", result)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "runs.csv", buf.getvalue())
    atomic_write_text(out_dir / "summary.md", format_summary(result, keys))
    from glotpool.experiments.report import plot_lines

    for key in keys:
        xs = settings.grid[key]
        per_x = [[r["test_" + metric] for r in rows if r[key] == x] for x in xs]
        stats = [mean_std(v) for v in per_x]
        plot_lines(xs, {settings.pooler: ([m for m, _ in stats], [s for _, s in stats])},
                   out_dir / f"sweep_{key}.png", xlabel=key, ylabel=f"test {metric} (%)",
                   title=f"{settings.task_name}: {metric} vs {key} (other keys and seeds pooled)")
    return result


def format_summary(result: dict, keys: list[str]) -> str:
    """One row per grid point: test mean ± std (bold: best or not significantly worse), mean dev score, the dev-chosen
    lr / weight decay, Δ vs the best point with its interval and p-value, graph density, parameters. ◆ marks the
    point a user would pick: the best by dev, never by test."""
    s, metric, sig = result["settings"], result["metric"], result.get("significance") or {}
    b = result["budget"]
    protocol_text = describe(b["name"], b["base"], b["grid"], per="point")
    lines = [f"# sweep — {s['pooler']} on {result['task']} (frozen {s['backbone']})", "",
             f"Test {metric} (%), mean ± std over seeds {list(s['seeds'])}; {protocol_text}. Edges/token = mean "
             "edges per token (self-loop included) on the test split.", ""]
    if sig:
        lines += [f"Δ vs best: difference to **{sig['best']}** (paired bootstrap over test examples of the "
                  f"seed-averaged predictions), 95 % interval and p-value; † = not significantly different from the "
                  f"best at α = {sig['alpha']}. ◆ = the best point by mean dev {metric} (the one to pick).", ""]
    lines += ["| " + " | ".join(keys) + f" | test {metric} | dev {metric} | chosen | Δ vs best [95 % CI], p "
              "| edges/token | params |", "|" + "---|" * (len(keys) + 6)]
    for r in result["summary"]:
        c = row_cells(r, sig)
        ept = r["edges_per_token"]
        mark = " ◆" if r["label"] == result["dev_selected"] else ""
        cells = [str(r["point"][k]) for k in keys] + [f"{c['test']}{mark}", f"{r['dev'] * 100:.1f}", c["chosen"],
                                                        c["delta"], "" if ept is None else f"{ept:.1f}", c["params"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
