"""``glotpool compare``: cache a task once, train every pooler with the same head, budget and seeds, and report.

    result = run_compare(CompareSettings(backbone="minilm", source=TaskSource("pang-lee")), out_dir="runs/compare-pang-lee")

Every pooler is trained under the same protocol (:mod:`glotpool.experiments.budgets`: by default converged, with
lr × weight decay chosen per pooler on dev) and compared with the best row by a paired significance test on the test
set (:mod:`glotpool.experiments.significance`). Writes ``results.json`` (every run), ``results.md`` (mean ± std,
chosen hyperparameters, Δ vs best with interval and p-value) and ``comparison.png``. Runs are resumable
(``runs/<pooler>/<grid point>/seed-<s>/run.json``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from glotpool.data import TaskSource
from glotpool.experiments.budgets import budget_config, tune_and_run
from glotpool.experiments.runs import PoolerSpec, fmt_mean_std, mean_std
from glotpool.experiments.significance import compare_to_best
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
    budget: str = "converged"  # converged | paper | fixed (glotpool.experiments.budgets)
    train: TrainConfig = field(default_factory=TrainConfig)  # "fixed": used as is; else device/batch size/precision
    grid: dict | None = None  # converged budget: the dev-selected grid (None = CONVERGED_GRID)
    probe: str | None = None  # "sklearn": add a dev-tuned LogisticRegression row per parameter-free pooler
    max_length: int = 256
    layer: int = -1
    glot_defaults: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)
    cache_dir: str | None = None  # default OUT/cache
    show_progress: bool = True


# metric families the paired tests know: per-row correctness (classification) or a correlation (sts)
_TEST_KIND = {"accuracy": "accuracy", "spearman": "spearman", "pearson": "pearson"}


def run_compare(settings: CompareSettings, out_dir: str | Path, backbone=None) -> dict:
    from glotpool.states.backbone import load_backbone

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    task = settings.source.load()
    backbone = backbone or load_backbone(settings.backbone, max_length=settings.max_length, layer=settings.layer)
    exp = prepare_experiment(backbone, task, settings.cache_dir or out_dir / "cache",
                             show_progress=settings.show_progress)
    specs = [adapt_spec(PoolerSpec.parse(text), backbone, settings.glot_defaults) for text in settings.poolers]
    base, grid = budget_config(settings.budget, replace(settings.train, show_progress=False))
    if settings.grid is not None and settings.budget == "converged":
        grid = dict(settings.grid)
    metric = base.metric or default_metric(task.task_type)
    records, summary = [], []
    bar = tqdm(total=len(specs), desc=f"compare {task.name} ({settings.budget})", unit="pooler",
               disable=not settings.show_progress or None)
    for spec in specs:
        bar.set_postfix_str(spec.label)
        chosen, recs, dev_table = tune_and_run(spec, exp.cache, exp.data, base, grid, settings.seeds,
                                               out_dir / "runs" / spec.label, settings.head_options)
        records += [asdict(r) for r in recs]
        vals = [r.test[metric] for r in recs]
        m, sd = mean_std(vals)
        summary.append({"label": spec.label, "mean": m, "std": sd, "n": len(vals), "values": vals,
                        "chosen": chosen, "dev_grid": dev_table, "parameters": recs[0].trainable_parameters,
                        "seconds_per_epoch": sum(r.seconds_per_epoch for r in recs) / len(recs),
                        "predictions": [r.test_predictions for r in recs]})
        bar.update(1)
    bar.close()
    if settings.probe == "sklearn":
        summary += _probe_rows(specs, exp, metric)
    elif settings.probe is not None:
        raise ValueError(f"unknown probe {settings.probe!r}; valid: sklearn")
    significance = _significance(summary, exp, metric)
    for row in summary:
        row.pop("predictions", None)
    result = {"task": task.name, "task_type": task.task_type, "metric": metric, "settings": asdict(settings),
              "budget": {"name": settings.budget, "base": asdict(base), "grid": grid},
              "backbone": backbone.fingerprint(), "sizes": {k: len(v) for k, v in task.splits.items()},
              "records": records, "summary": summary, "significance": significance,
              "cache_seconds": exp.cache_seconds, "total_seconds": time.perf_counter() - t0}
    atomic_write_json(out_dir / "results.json", result)
    atomic_write_text(out_dir / "results.md", format_compare_table(result))
    from glotpool.experiments.report import plot_bars

    plot_bars(summary, out_dir / "comparison.png", metric,
              title=f"{task.name} with frozen {settings.backbone}: test {metric}, mean ± std over "
                    f"{len(settings.seeds)} seeds ({settings.budget})")
    return result


def _probe_rows(specs, exp, metric: str) -> list[dict]:
    from glotpool.experiments.probe import sklearn_probe
    from glotpool.pooling import build_pooler

    rows = []
    for spec in specs:
        if spec.options or build_pooler(spec.name, in_dim=exp.cache.dim).num_trainable_parameters():
            continue  # the probe is the converged reference for parameter-free poolers only
        probe = sklearn_probe(spec.name, exp.cache, exp.data, metric=metric)
        rows.append({"label": f"{spec.label} + sklearn LR", "mean": probe["test"][metric], "std": 0.0, "n": 1,
                     "values": [probe["test"][metric]], "chosen": {"C": probe["C"]}, "dev_grid": probe["dev_by_C"],
                     "parameters": 0, "seconds_per_epoch": float("nan"),
                     "predictions": [probe["test_predictions"]]})
    return rows


def _significance(summary: list[dict], exp, metric: str) -> dict:
    """Every row against the best row by the paired test of its kind; {} when the metric has none."""
    kind = _TEST_KIND.get(metric)
    rows = {r["label"]: r["predictions"] for r in summary if r.get("predictions") and None not in r["predictions"]}
    if kind is None or len(rows) < 2:
        return {}
    golds = exp.data["test"].targets
    best = max(rows, key=lambda label: next(r["mean"] for r in summary if r["label"] == label))
    tests = compare_to_best(rows, golds, kind, best)
    return {"best": best, "alpha": 0.05, "tests": {k: asdict(v) for k, v in tests.items()}}


def format_compare_table(result: dict) -> str:
    s = result["settings"]
    sizes = result["sizes"]
    sig = result.get("significance") or {}
    tests = sig.get("tests", {})
    b = result.get("budget", {"name": s.get("budget", "fixed"), "grid": {}})
    grid = ", ".join(f"{k} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}" for k, vals in b["grid"].items())
    protocol = {"converged": f"budget `converged`: up to {b.get('base', {}).get('epochs')} epochs, warm-up + cosine "
                             f"decay, early stopping on dev; per pooler {grid} chosen on dev with the first seed",
                "paper": "budget `paper`: 3 epochs at lr 1e-4 (the published setting), no selection",
                "fixed": "budget `fixed`: the given lr / epochs for every pooler"}.get(b["name"], b["name"])
    lines = [f"# {result['task']} — frozen {s['backbone']}", "",
             f"Test {result['metric']} (%), mean ± std over seeds {list(s['seeds'])}; same head for all; {protocol}; "
             "splits " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".", ""]
    if sig:
        lines += [f"Δ vs best: {result['metric']} difference to **{sig['best']}** with its 95 % interval and p-value "
                  f"({next(iter(tests.values()))['method'] if tests else 'paired test'}); † = not significantly "
                  f"different from the best at α = {sig['alpha']}.", ""]
    lines += ["| pooler | test " + result["metric"] + " | chosen | Δ vs best [95 % CI], p | trainable params | s/epoch |",
              "|---|---|---|---|---|---|"]
    for r in result["summary"]:
        text = fmt_mean_std(r["values"])
        t = tests.get(r["label"])
        if r["label"] == sig.get("best") or (t is not None and t["p_value"] >= sig["alpha"]):
            text = f"**{text}**" + ("" if r["label"] == sig.get("best") else " †")
        chosen = ", ".join(f"{k} {v:g}" for k, v in (r.get("chosen") or {}).items()) or "—"
        delta = ("best" if r["label"] == sig.get("best") else
                 f"{t['delta'] * 100:+.1f} [{t['low'] * 100:+.1f}, {t['high'] * 100:+.1f}], p={t['p_value']:.3f}"
                 if t else "—")
        spe = "—" if r["seconds_per_epoch"] != r["seconds_per_epoch"] else f"{r['seconds_per_epoch']:.2f}"
        lines.append(f"| {r['label']} | {text} | {chosen} | {delta} | {r['parameters']:,} | {spe} |")
    return "\n".join(lines) + "\n"
