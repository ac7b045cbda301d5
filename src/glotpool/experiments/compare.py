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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from glotpool.data import TaskSource
from glotpool.experiments.budgets import describe, protocol, tune_and_run
from glotpool.experiments.runs import PoolerSpec, fmt_mean_std, learned_anything, mean_std
from glotpool.experiments.significance import compare_to_best
from glotpool.experiments.scaffold import adapt_spec, prepare_experiment
from glotpool.io_utils import atomic_write_json, atomic_write_text
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
    prompt: str | None = None  # a preset (prompteol, echo) or a template with {text}; poolers pick tokens=text|all
    layers: tuple[int, ...] | str | None = None  # hidden layers the cache holds ("all"); poolers pick layer= / mix=
    glot_defaults: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)
    cache_dir: str | None = None  # default OUT/cache
    show_progress: bool = True
    # suite="decoder": glotpool.experiments.decoder_suite.run_decoder_suite (its own rows instead of `poolers`)
    suite: str | None = None
    suite_rows: tuple[str, ...] | None = None  # keep only the suite rows matching these names / glob patterns
    mix_size: int = 6  # the suite's layer mix: this many evenly spaced layers, plus the best dev layer and the last


# metric families the paired tests know: per-row correctness (classification) or a correlation (sts)
PAIRED_TEST_KIND = {"accuracy": "accuracy", "spearman": "spearman", "pearson": "pearson"}


def backbone_states(settings: CompareSettings) -> dict:
    """The backbone options that choose its states: layer, and prompt / layers when given."""
    given = {"prompt": settings.prompt, "layers": settings.layers}
    return {"layer": settings.layer, **{k: v for k, v in given.items() if v is not None}}


def run_compare(settings: CompareSettings, out_dir: str | Path, backbone=None) -> dict:
    from glotpool.states.backbone import load_backbone

    if settings.suite is not None:
        raise ValueError(f"suite={settings.suite!r} runs through glotpool.experiments.decoder_suite."
                         "run_decoder_suite (glotpool compare --suite decoder), not run_compare")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    task = settings.source.load()
    backbone = backbone or load_backbone(settings.backbone, max_length=settings.max_length,
                                         **backbone_states(settings))
    exp = prepare_experiment(backbone, task, settings.cache_dir or out_dir / "cache",
                             show_progress=settings.show_progress)
    specs = [adapt_spec(PoolerSpec.parse(text), backbone, settings.glot_defaults) for text in settings.poolers]
    base, grid, metric = protocol(settings.budget, settings.train, settings.grid, task.task_type)
    records, summary = [], []
    bar = tqdm(total=len(specs), desc=f"compare {task.name} ({settings.budget})", unit="pooler",
               disable=not settings.show_progress or None)
    check_probe(settings.probe)
    for spec in specs:
        bar.set_postfix_str(spec.label)
        chosen, recs, dev_table = tune_and_run(spec, exp.cache, exp.data, base, grid, settings.seeds,
                                               out_dir / "runs" / spec.label, settings.head_options)
        records += [asdict(r) for r in recs]
        summary.append(summary_row(spec.label, chosen, recs, dev_table, metric))
        bar.update(1)
    bar.close()
    if settings.probe == "sklearn":
        summary += [row for spec in specs if (row := probe_row(spec, exp, metric)) is not None]
    significance = significance_vs_best(summary, exp.data["test"].targets, metric)
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


def check_probe(probe: str | None) -> None:
    if probe not in (None, "sklearn"):
        raise ValueError(f"unknown probe {probe!r}; valid: sklearn")


def summary_row(label: str, chosen: dict, recs: list, dev_table: dict, metric: str) -> dict:
    """One table row from a pooler's per-seed records at its dev-chosen point: test mean ± std, the mean dev
    metric (what dev selection compares), the states it read and, for a layer mix, the mean learned weights."""
    vals = [r.test[metric] for r in recs]
    m, sd = mean_std(vals)
    row = {"label": label, "mean": m, "std": sd, "n": len(vals), "values": vals,
           "dev": mean_std([r.dev.get(metric) for r in recs])[0], "chosen": chosen, "dev_grid": dev_table,
           "parameters": recs[0].trainable_parameters,
           "seconds_per_epoch": sum(r.seconds_per_epoch for r in recs) / len(recs),
           "predictions": [r.test_predictions for r in recs]}
    if recs[0].states:
        row["states"] = recs[0].states
    collapsed = [r.seed for r in recs if learned_anything(r) is False]
    if collapsed:  # kept in the mean (that is how reliable the row is), and said in the table
        row["learned_nothing"] = collapsed
    mixes = [r.extra["layer_mix"] for r in recs if r.extra.get("layer_mix", {}).get("weights")]
    if mixes:
        row["layer_mix"] = {"layers": mixes[0]["layers"],
                            "weights": np.mean([x["weights"] for x in mixes], 0).tolist(),
                            "gamma": float(np.mean([x["gamma"] for x in mixes]))}
    return row


def probe_row(spec: PoolerSpec, exp, metric: str, label: str | None = None) -> dict | None:
    """The dev-tuned sklearn probe's row for a parameter-free, option-free pooler (on the states ``spec`` reads);
    None for any other spec (the probe is the converged reference of parameter-free poolers only)."""
    from glotpool.experiments.probe import sklearn_probe
    from glotpool.pooling import build_pooler

    if spec.options or spec.states.mixed or build_pooler(spec.name, in_dim=exp.cache.dim).num_trainable_parameters():
        return None
    probe = sklearn_probe(spec.name, exp.cache, exp.data, metric=metric, states=spec.states)
    row = {"label": f"{label or spec.label} + sklearn LR", "mean": probe["test"][metric], "std": 0.0, "n": 1,
           "values": [probe["test"][metric]], "dev": probe["dev"][metric], "chosen": {"C": probe["C"]},
           "dev_grid": probe["dev_by_C"], "parameters": 0, "seconds_per_epoch": float("nan"),
           "predictions": [probe["test_predictions"]]}
    if not spec.states.is_default:
        row["states"] = spec.states.as_dict()
    return row


def significance_vs_best(summary: list[dict], golds, metric: str) -> dict:
    """Every row against the best row (by test mean) by the paired test of its kind on the test rows ``golds``;
    {} when the metric has none."""
    kind = PAIRED_TEST_KIND.get(metric)
    rows = {r["label"]: r["predictions"] for r in summary if r.get("predictions") and None not in r["predictions"]}
    if kind is None or len(rows) < 2:
        return {}
    best = max(rows, key=lambda label: next(r["mean"] for r in summary if r["label"] == label))
    tests = compare_to_best(rows, golds, kind, best)
    return {"best": best, "alpha": 0.05, "tests": {k: asdict(v) for k, v in tests.items()}}


def table_intro(result: dict, what: str = "same head for all") -> list[str]:
    """The protocol paragraph(s) above a comparison table: metric, seeds, budget, splits, the paired test."""
    s = result["settings"]
    sizes = result["sizes"]
    sig = result.get("significance") or {}
    tests = sig.get("tests", {})
    b = result["budget"]
    protocol = describe(b["name"], b["base"], b["grid"])
    lines = [f"Test {result['metric']} (%), mean ± std over seeds {list(s['seeds'])}; {what}; {protocol}; "
             "splits " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".", ""]
    if sig:
        lines += [f"Δ vs best: {result['metric']} difference to **{sig['best']}** with its 95 % interval and p-value "
                  f"({next(iter(tests.values()))['method'] if tests else 'paired test'}); † = not significantly "
                  f"different from the best at α = {sig['alpha']}.", ""]
    return lines


def row_cells(r: dict, sig: dict) -> dict:
    """A summary row's standard table cells: test score (bold = best or not significantly worse), chosen
    hyperparameters, Δ vs best, trainable parameters, seconds per epoch."""
    t = (sig.get("tests") or {}).get(r["label"])
    text = fmt_mean_std(r["values"])
    if r["label"] == sig.get("best") or (t is not None and t["p_value"] >= sig["alpha"]):
        text = f"**{text}**" + ("" if r["label"] == sig.get("best") else " †")
    delta = ("best" if r["label"] == sig.get("best") else
             f"{t['delta'] * 100:+.1f} [{t['low'] * 100:+.1f}, {t['high'] * 100:+.1f}], p={t['p_value']:.3f}"
             if t else "—")
    chosen = ", ".join(f"{k} {v:g}" for k, v in (r.get("chosen") or {}).items()) or "—"
    if r.get("learned_nothing"):
        chosen += f"; seed {', '.join(map(str, r['learned_nothing']))} learned nothing (class prior)"
    return {"test": text, "chosen": chosen,
            "delta": delta, "params": f"{r['parameters']:,}",
            "s/epoch": "—" if r["seconds_per_epoch"] != r["seconds_per_epoch"] else f"{r['seconds_per_epoch']:.2f}"}


def format_compare_table(result: dict) -> str:
    sig = result.get("significance") or {}
    lines = [f"# {result['task']} — frozen {result['settings']['backbone']}", "", *table_intro(result)]
    lines += ["| pooler | test " + result["metric"] + " | chosen | Δ vs best [95 % CI], p | trainable params | s/epoch |",
              "|---|---|---|---|---|---|"]
    for r in result["summary"]:
        c = row_cells(r, sig)
        lines.append(f"| {r['label']} | {c['test']} | {c['chosen']} | {c['delta']} | {c['params']} | {c['s/epoch']} |")
    return "\n".join(lines) + "\n"
