"""The diagnostic stress test: ratios × poolers × seeds × budgets on cached states of a frozen backbone.

    result = run_stress(StressSettings(backbone="minilm"), out_dir="runs/stress")

For each distractor ratio: generate the seeded data (:mod:`glotpool.data.stressgen`, needle never truncated), carve a dev
split from train by twin pair (no twin on both sides), cache the backbone states once, then train every pooler with
every seed under each budget:

* ``paper``     — the published script's budget: 3 epochs, lr 1e-4, batch 32 (dev-selected epoch);
* ``converged`` — ``compare``'s protocol (:mod:`glotpool.experiments.budgets`): cosine decay, early stopping on
  dev, lr × weight decay picked per ratio and pooler on dev from ``train_grid`` with the first seed and reused for
  the others.

The eval split is touched once per run, with the dev-selected weights. Every run is resumable (``run.json``). Each
ratio's table marks the poolers not significantly different from its best (paired bootstrap over the eval sentences
of the seed-averaged predictions; McNemar with one seed).
Outputs in ``out_dir``: ``results.json``, ``results.md``, ``accuracy_vs_ratio_<budget>.png``, ``token_weights.png``
and the generated data (``data/ratio-*.jsonl``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from glotpool.data import LoadedTask
from glotpool.experiments.budgets import describe, point_name, protocol, tune_and_run
from glotpool.experiments.runs import PoolerSpec, fmt_mean_std, learned_anything, mean_std
from glotpool.experiments.significance import compare_to_best
from glotpool.io_utils import atomic_write_json, atomic_write_text
from glotpool.data.stressgen import StressConfig, make_stress_data, save_stress_data, stress_splits, token_counter
from glotpool.experiments.scaffold import adapt_spec, prepare_experiment
from glotpool.experiments.scaffold import graph_stats as graph_stats_of
from glotpool.training.trainer import TrainConfig

BUDGETS = ("paper", "converged")  # of experiments.budgets: the stress test trains as compare does
DEFAULT_POOLERS = ("mean", "max", "cls", "adapool", "glot")
# GLOT for the stress test: the published stress script's small GNN (hidden 64) with the paper's K=2 and tau=0.6.
STRESS_GLOT = {"hidden_dim": 64, "num_layers": 2, "tau": 0.6}


@dataclass
class StressSettings:
    backbone: str = "minilm"
    ratios: tuple[float, ...] = (0.2, 0.5, 0.8, 0.9)
    poolers: tuple[str, ...] = DEFAULT_POOLERS  # PoolerSpec text; "cls" becomes "last" on decoders
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[str, ...] = ("paper", "converged")
    length: int = 128
    n_train: int = 2000  # dev is carved from these
    n_eval: int = 500
    dev_fraction: float = 0.2
    data_seed: int = 0
    negation_in_noise: bool = False
    max_length: int = 256
    cache_batch_size: int = 32
    train_grid: dict | None = None  # converged budget: the dev grid per ratio and pooler (None: CONVERGED_GRID)
    glot_defaults: dict = field(default_factory=lambda: dict(STRESS_GLOT))
    precision: str = "fp32"  # training precision: fp32 | bf16 (autocast)
    cache_dir: str | None = None  # where the per-ratio caches live (default OUT/cache); share it between runs
    weight_figure_sentences: int = 3
    max_epochs: int | None = None  # cap every budget's epochs (smoke runs)
    show_progress: bool = True


def run_stress(settings: StressSettings, out_dir: str | Path, backbone=None) -> dict:
    """Run the whole grid (resumable) and write results, table and figures to ``out_dir``."""
    from glotpool.states.backbone import load_backbone

    out_dir = Path(out_dir)
    unknown = [b for b in settings.budgets if b not in BUDGETS]  # "fixed" has no meaning without a TrainConfig
    if unknown:
        raise ValueError(f"unknown budget(s) {unknown}; valid: {', '.join(BUDGETS)}")
    if not settings.seeds:
        raise ValueError("give at least one seed")
    t_start = time.perf_counter()
    backbone = backbone or load_backbone(settings.backbone, max_length=settings.max_length)
    specs = [adapt_spec(PoolerSpec.parse(t), backbone, settings.glot_defaults) for t in settings.poolers]
    count = token_counter(backbone.tokenizer)
    records: list[dict] = []
    graph_stats: dict = {}
    cache_seconds: dict = {}
    weight_examples = None
    golds: dict = {}  # ratio -> eval labels, for the paired tests
    protocols: dict = {}  # budget -> {"base": TrainConfig as a dict, "grid": dev grid}
    n_runs = len(settings.ratios) * len(specs) * len(settings.budgets) * len(settings.seeds)
    bar = tqdm(total=n_runs, desc=f"stress {settings.backbone}", unit="run", disable=not settings.show_progress or None)
    for ratio in settings.ratios:
        cfg = StressConfig(ratio=ratio, length=settings.length, n_train=settings.n_train, n_eval=settings.n_eval,
                           seed=settings.data_seed, negation_in_noise=settings.negation_in_noise)
        data = make_stress_data(cfg, count_tokens=count, max_tokens=settings.max_length)
        save_stress_data(data, out_dir / "data" / f"ratio-{ratio:g}.jsonl")
        task = LoadedTask(f"stress-{ratio:g}", "single", stress_splits(data, settings.dev_fraction, settings.data_seed))
        bar.set_postfix_str(f"caching ratio {ratio:g}")
        cache_root = Path(settings.cache_dir) if settings.cache_dir else out_dir / "cache"
        exp = prepare_experiment(backbone, task, cache_root / f"{backbone_tag(backbone)}-ratio-{ratio:g}",
                                 batch_size=settings.cache_batch_size, show_progress=settings.show_progress)
        cache, splits = exp.cache, exp.data
        cache_seconds[f"{ratio:g}"] = exp.cache_seconds
        ratio_specs = [spec.resolved(cache, splits["train"].idx1) for spec in specs]  # e.g. target_density -> tau
        for spec in ratio_specs:
            if spec.name == "glot":
                graph_stats[(ratio, spec.label)] = {**graph_stats_of(spec, cache, splits["test"].idx1),
                                                    "tau": spec.kwargs.get("tau")}
        golds[f"{ratio:g}"] = splits["test"].targets
        for budget in settings.budgets:
            base, grid, _ = protocol(budget, TrainConfig(batch_size=32, precision=settings.precision),
                                     settings.train_grid if budget == "converged" else None, "single")
            if settings.max_epochs is not None:
                base = replace(base, epochs=min(base.epochs, settings.max_epochs))
            protocols[budget] = {"base": asdict(base), "grid": grid}
            for spec in ratio_specs:
                bar.set_postfix_str(f"r={ratio:g} {budget} {spec.label}")
                run_root = out_dir / "runs" / f"ratio-{ratio:g}" / budget / spec.label
                # the token-weight figure's models: seed 0 at the highest ratio under the last budget
                keep = budget == settings.budgets[-1] and ratio == max(settings.ratios) and spec.name in (
                    "glot", "adapool")
                chosen, recs, _ = tune_and_run(spec, cache, splits, base, grid, settings.seeds, run_root,
                                               save_model=keep)
                for rec in recs:
                    row = {"ratio": ratio, "budget": budget, **asdict(rec), "chosen": chosen,
                           "run_dir": str(run_root / point_name(chosen) / f"seed-{rec.seed}")}
                    if (ratio, spec.label) in graph_stats:
                        row["graph"] = graph_stats[(ratio, spec.label)]
                    records.append(row)
                if keep:
                    weight_examples = (cache, data["eval"], splits)
                bar.update(len(settings.seeds))
    bar.close()
    summary = summarize(records, settings, golds)
    result = {"settings": asdict(settings), "backbone": backbone.fingerprint(), "records": records,
              "summary": summary, "budgets": protocols, "cache_seconds": cache_seconds,
              "graph": [{"ratio": r, "pooler": l, **v} for (r, l), v in graph_stats.items()],
              "total_seconds": time.perf_counter() - t_start}
    atomic_write_json(out_dir / "results.json", result)
    table = format_table(summary, settings, result["graph"], protocols)
    atomic_write_text(out_dir / "results.md", table)
    from glotpool.experiments.report import plot_accuracy_vs_ratio

    for budget in settings.budgets:
        plot_accuracy_vs_ratio(summary, budget, out_dir / f"accuracy_vs_ratio_{budget}.png",
                               title=f"Stress test, {settings.backbone}, budget '{budget}'")
    if weight_examples is not None:
        _token_weight_figure(out_dir, records, backbone, weight_examples, settings)
    return result


def backbone_tag(backbone) -> str:
    return f"{Path(str(backbone.config.name_or_path)).name}-L{backbone.config.layer}-{backbone.config.max_length}"


def summarize(records: list[dict], settings: StressSettings, golds: dict) -> dict:
    """``{budget: {pooler label: {ratio: {"mean", "std", "n", "acc", "chosen", "edges_per_token", "vs_best",
    "learned_nothing"?}}}}`` of eval accuracy; ``vs_best`` is the paired test against the ratio's best pooler under
    that budget (None: it is the best); ``learned_nothing`` lists the seeds whose runs collapsed to the class prior."""
    out: dict = {}
    predictions: dict = {}
    for r in records:
        ratio = f"{r['ratio']:g}"
        cell = out.setdefault(r["budget"], {}).setdefault(r["label"], {}).setdefault(ratio, {"acc": []})
        cell["acc"].append((r["test"] or {}).get("accuracy", math.nan))
        if learned_anything(r) is False:  # it stays in the mean; the table names it
            cell.setdefault("learned_nothing", []).append(r["seed"])
        cell["chosen"] = r.get("chosen", {})
        if "graph" in r:
            cell["edges_per_token"] = r["graph"]["edges_per_token"]
        predictions.setdefault((r["budget"], ratio), {}).setdefault(r["label"], []).append(r.get("test_predictions"))
    for budget, poolers in out.items():
        for pooler in poolers.values():
            for cell in pooler.values():
                m, s = mean_std(cell["acc"])
                cell.update(mean=m, std=s, n=len(cell["acc"]))
        for ratio in {r for cells in poolers.values() for r in cells}:
            rows = {label: p for label, p in predictions[(budget, ratio)].items() if None not in p}
            if len(rows) < 2 or ratio not in golds:
                continue
            best = max(rows, key=lambda label: poolers[label][ratio]["mean"])
            tests = compare_to_best(rows, golds[ratio], "accuracy", best)
            for label in rows:
                poolers[label][ratio]["vs_best"] = asdict(tests[label]) if label in tests else None
    return out


def format_table(summary: dict, settings: StressSettings, graph: list[dict], protocols: dict) -> str:
    ratios = [f"{r:g}" for r in settings.ratios]
    lines = [f"# Stress test — {settings.backbone}", "",
             f"Eval accuracy (%), mean ± std over seeds {list(settings.seeds)}; {settings.n_train} train "
             f"({settings.dev_fraction:.0%} of it carved out as dev, split by twin pair) / {settings.n_eval} eval, "
             f"L={settings.length} words, negation words in noise: {settings.negation_in_noise}.", ""]
    for budget, poolers in summary.items():
        p = protocols[budget]
        varied = [k for k, v in p["grid"].items() if len(v) > 1]  # grid keys a "chosen" column reports
        tuned = bool(varied)
        lines += [f"## budget `{budget}`", "",
                  describe(budget, p["base"], p["grid"], per="ratio and pooler")
                  + ". **Bold**: the ratio's best, and † the poolers not significantly different from it "
                  "(α = 0.05).",
                  "", "| pooler | " + " | ".join(f"r={r}" for r in ratios) + " |"
                  + (f" chosen {', '.join(varied)} per ratio |" if tuned else ""),
                  "|---|" + "---|" * (len(ratios) + tuned)]
        for label, cells in poolers.items():
            row = [_cell(cells.get(r)) for r in ratios]
            if tuned:
                row.append(" · ".join("/".join(f"{c['chosen'][k]:g}" for k in varied) if c.get("chosen") else "—"
                                      for c in (cells.get(r, {}) for r in ratios)))
            lines.append(f"| {label} | " + " | ".join(row) + " |")
        lines.append("")
    if graph:
        lines += ["## token graphs (eval split)", "", "| pooler | ratio | tau | edges per token | density |",
                  "|---|---|---|---|---|"]
        lines += [f"| {g['pooler']} | {g['ratio']:g} | {g.get('tau')} | {g['edges_per_token']:.1f} | "
                  f"{g['density']:.3f} |" for g in graph]
        lines.append("")
    return "\n".join(lines)


def _cell(c: dict | None) -> str:
    """A ratio's cell: mean ± std, bold when best or (†) not significantly different from the best, then the seeds
    that learned nothing."""
    if c is None:
        return ""
    text = fmt_mean_std(c["acc"])
    t = c.get("vs_best", False)  # absent: no test (a lone pooler)
    if t is None:
        text = f"**{text}**"
    elif t and t["p_value"] >= 0.05:
        text = f"**{text}** †"
    if c.get("learned_nothing"):
        text += f" (seed {', '.join(map(str, c['learned_nothing']))} learned nothing)"
    return text


def _token_weight_figure(out_dir: Path, records, backbone, weight_examples, settings: StressSettings) -> None:
    from glotpool.pooling import load_pooler
    from glotpool.experiments.report import plot_token_weights

    cache, eval_examples, splits = weight_examples
    kept = [r for r in records if r["ratio"] == max(settings.ratios) and r["budget"] == settings.budgets[-1]
            and r["seed"] == settings.seeds[0] and r["pooler"] in ("glot", "adapool")]
    poolers = {}
    for r in kept:
        path = Path(r["run_dir"]) / "best" / "pooler"
        if path.is_dir() and r["label"] not in poolers:
            poolers[r["label"]] = load_pooler(path).eval()
    if not poolers:
        return
    # one affirmative and one negated example first, then more
    chosen = [next(i for i, e in enumerate(eval_examples) if e.label == 1),
              next(i for i, e in enumerate(eval_examples) if e.label == 0)]
    chosen += [i for i in range(len(eval_examples)) if i not in chosen][: max(0, settings.weight_figure_sentences - 2)]
    items = []
    for i in chosen:
        ex = eval_examples[i]
        row = splits["test"].idx1[i]
        h, m = cache.batch([row])
        enc = backbone.tokenizer(ex.text, truncation=True, max_length=backbone.config.max_length,
                                 return_offsets_mapping=True)
        tokens = backbone.tokenizer.convert_ids_to_tokens(enc["input_ids"])
        words = ex.text.split(" ")
        c0 = len(" ".join(words[:ex.needle_start])) + (1 if ex.needle_start else 0)
        c1 = len(" ".join(words[:ex.needle_end]))
        needle = [bool(e > s and s >= c0 and e <= c1) for s, e in enc["offset_mapping"]]
        weights = {}
        with torch.inference_mode():
            for label, pool in poolers.items():
                weights[label] = pool(h, m, return_weights=True)[1][0].numpy()
        if len(tokens) != h.shape[1]:  # tokenizer and cache disagree: skip rather than mislabel
            continue
        items.append({"tokens": tokens, "needle": needle, "weights": weights, "label": ex.label})
    if items:
        plot_token_weights(items, out_dir / "token_weights.png",
                           title=f"Learned token weights π at r={max(settings.ratios):g} ({settings.backbone}); "
                                 "needle tokens shaded, top-3 marked")
