"""``glotpool compare --suite decoder``: prompt baselines, layer choice and a learned layer mix, in one command.

    settings = CompareSettings(backbone="smollm2", source=TaskSource("pang-lee"), suite="decoder")
    result = run_decoder_suite(settings, "runs/decoder-pang-lee")

1. The layer probe (:mod:`glotpool.experiments.layers`: train and dev only) picks the best dev layer *b*.
2. One cache per prompt the rows need (none, PromptEOL, echo), each holding only the layers its rows read: the
   last layer, *b* and, for mix rows, the mix set (:func:`mix_layers`: ``mix_size`` evenly spaced layers, plus *b*
   and the last). With every row that is 1 probe pass over train + dev and 3 cache passes (echo texts are twice
   as long).
3. Every row under ``compare``'s protocol (:mod:`glotpool.experiments.budgets`): the same linear head, the budget
   (converged by default: lr × weight decay chosen per row on dev with the first seed), every seed at the chosen
   point, the sklearn probe rows for the training-free rows with ``probe="sklearn"``, paired significance of every
   row against the best on test.
4. ``results.md``: per row its layer / prompt / tokens, test score, mean dev score, chosen point, Δ vs best and, for
   mix rows, the mean learned mix weights; the GLOT row with the best mean dev metric is marked *dev-selected*
   (so layer, prompt and token choices are made on dev; test never enters a choice). Then the layer probe's curve
   with GLOT's graph density per layer (``layers/``).

:data:`DECODER_ROWS` is the row list; ``settings.suite_rows`` keeps only the rows matching its names or glob
patterns (``("mean", "glot-*")``). On an encoder backbone the suite runs the same rows (prompts apply to encoders
too; ``last`` is then the final ``[SEP]`` token).
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from glotpool.experiments.budgets import protocol, tune_and_run
from glotpool.experiments.compare import (PAIRED_TEST_KIND, CompareSettings, check_probe, probe_row, row_cells,
                                          significance_vs_best, summary_row, table_intro)
from glotpool.experiments.layers import LayerSettings, format_layer_table, run_layers
from glotpool.experiments.runs import PoolerSpec
from glotpool.experiments.scaffold import adapt_spec, backbone_variant, prepare_experiment
from glotpool.experiments.significance import compare_to_best
from glotpool.io_utils import atomic_write_json, atomic_write_text
from glotpool.training.trainer import StateSelection

LAYER_CHOICES = ("last", "best", "mix")  # the last layer, the layer probe's best dev layer, the learned mix
LEARNED_POOLERS = ("adapool", "pma", "glot")


@dataclass(frozen=True)
class SuiteRow:
    """One row: its ``name`` (table label, ``suite_rows`` pattern target), the pooler (PoolerSpec text without
    state options), which layer(s), which prompt and which tokens it reads."""

    name: str
    pooler: str
    layer: str = "last"  # one of LAYER_CHOICES
    prompt: str | None = None  # None | "prompteol" | "echo"
    tokens: str = "all"  # "all" | "text" (echo: the second copy)

    def states(self, best: int, last: int, mix: tuple[int, ...]) -> StateSelection:
        return StateSelection({"last": last, "best": best, "mix": mix}[self.layer], self.tokens)

    def layer_text(self, best: int, last: int, mix: tuple[int, ...]) -> str:
        return {"last": f"last ({last})", "best": f"best dev ({best})",
                "mix": "mix of " + ",".join(map(str, mix))}[self.layer]


TRAINING_FREE_ROWS: tuple[SuiteRow, ...] = (
    SuiteRow("mean", "mean"),
    SuiteRow("last", "last"),
    SuiteRow("prompteol-last", "last", prompt="prompteol"),
    SuiteRow("echo-mean", "mean", prompt="echo", tokens="text"),
)

DECODER_ROWS: tuple[SuiteRow, ...] = (
    # training-free poolers, each with the same linear head as every other row, on the last layer and, since GLOT
    # gets the best dev layer too, on that layer (a baseline on the last layer only would flatter the learned rows)
    *TRAINING_FREE_ROWS,
    *(replace(r, name=f"{r.name}-best", layer="best") for r in TRAINING_FREE_ROWS),
    # learned poolers x {last layer, best dev layer, layer mix} x {no prompt, echo (pooling the second copy)}
    *(SuiteRow(f"{pooler}-{layer}" + ("-echo" if echo else ""), pooler, layer, "echo" if echo else None,
               "text" if echo else "all")
      for pooler in LEARNED_POOLERS for echo in (False, True) for layer in LAYER_CHOICES),
)


def select_rows(rows: tuple[SuiteRow, ...], patterns: tuple[str, ...] | None) -> list[SuiteRow]:
    """The rows whose name matches one of ``patterns`` (names or globs), in the patterns' order (a glob's matches in
    row-list order; each row once), so the rows a user wants first run first; all rows, in row-list order, for None."""
    if patterns is None:
        return list(rows)
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(r.name, p) for r in rows)]
    if unknown:
        raise ValueError(f"suite row pattern(s) {unknown} match no row; rows: {', '.join(r.name for r in rows)}")
    picked = [r for p in patterns for r in rows if fnmatch.fnmatchcase(r.name, p)]
    return list(dict.fromkeys(picked))


def mix_layers(num_layers: int, best: int, size: int = 6) -> tuple[int, ...]:
    """The layer mix: ``size`` evenly spaced hidden layers from ``num_layers / size`` up to the last
    (``num_layers``), plus the best dev layer ``best`` (SmolLM2, 30 layers, size 6: 5, 10, 15, 20, 25, 30 + b)."""
    if size < 2:
        raise ValueError(f"a layer mix needs mix_size >= 2 layers, got {size}")
    picks = {max(1, round(num_layers * (i + 1) / size)) for i in range(size)}
    return tuple(sorted(picks | {best, num_layers}))


def cache_plan(rows: list[SuiteRow], best: int, last: int, mix: tuple[int, ...]) -> dict[str | None, tuple]:
    """Per prompt the rows use: the hidden layers its cache must hold (one backbone pass each)."""
    plan: dict[str | None, set] = {}
    for r in rows:
        plan.setdefault(r.prompt, set()).update(mix if r.layer == "mix" else
                                                (best if r.layer == "best" else last,))
    return {p: tuple(sorted(layers)) for p, layers in plan.items()}


def run_decoder_suite(settings: CompareSettings, out_dir: str | Path, backbone=None) -> dict:
    """Run the suite (module doc) into ``out_dir``: ``layers/`` (the probe), ``cache/<prompt>/``, ``runs/<row>/``,
    ``results.json``, ``results.md``, ``comparison.png``. Every run is resumable, as in ``compare``."""
    from glotpool.states.backbone import load_backbone

    if settings.suite != "decoder":
        raise ValueError(f"unknown suite {settings.suite!r}; valid: decoder")
    if settings.prompt is not None or settings.layers is not None or settings.layer != -1:
        raise ValueError("the decoder suite chooses prompts and layers itself (its rows); drop prompt / layers / "
                         "layer (--prompt, --layers, --layer)")
    check_probe(settings.probe)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    task = settings.source.load()
    if "test" not in task.splits:
        raise ValueError("the decoder suite reports test scores with paired tests; the task needs a test split "
                         "(--test FILE, or --data FILE to split one off)")
    rows = select_rows(DECODER_ROWS, settings.suite_rows)
    base_bb = backbone or load_backbone(settings.backbone, max_length=settings.max_length)
    curve = run_layers(LayerSettings(backbone=settings.backbone, source=settings.source,
                                     max_length=settings.max_length, show_progress=settings.show_progress),
                       out_dir / "layers", backbone=base_bb, task=task)
    last, best = curve["num_layers"], curve["best_layer"]
    notes = []
    if best == last and any(r.layer == "best" for r in rows):
        rows = [r for r in rows if r.layer != "best"]
        notes.append(f"The best dev layer is the last one ({last}), so the best-layer rows are the last-layer rows "
                     "and are not run twice.")
    mix = mix_layers(last, best, settings.mix_size)
    cache_root = Path(settings.cache_dir) if settings.cache_dir else out_dir / "cache"
    exps, caches = {}, {}
    for prompt, layers in cache_plan(rows, best, last, mix).items():
        bb = backbone_variant(base_bb, prompt=prompt, layers=layers)
        exps[prompt] = prepare_experiment(bb, task, cache_root / (prompt or "plain"),
                                          show_progress=settings.show_progress)
        caches[prompt or "none"] = {"layers": list(layers), "key": exps[prompt].cache.key,
                                    "seconds": exps[prompt].cache_seconds}
    golds = next(iter(exps.values())).data["test"].targets
    if any(not np.array_equal(e.data["test"].targets, golds) for e in exps.values()):
        raise RuntimeError("the caches' test targets differ; the paired tests need the same test rows")

    base, grid, metric = protocol(settings.budget, settings.train, settings.grid, task.task_type)
    records, summary = [], []
    suite = {"name": "decoder", "rows": [asdict(r) for r in rows], "best_layer": best, "last_layer": last,
             "mix_layers": list(mix), "caches": caches, "notes": notes,
             "layer_curve": {k: curve[k] for k in ("points", "best_layer", "best_dev", "tau", "probe")}}

    def write(done: int) -> dict:
        """results.json / .md / .png of the rows done so far: an interrupted suite still leaves its table."""
        significance = significance_vs_best(summary, golds, metric)
        rows_out = [{k: v for k, v in r.items() if k != "predictions"} for r in summary]
        selected = _dev_best(rows_out, lambda r: r["pooler"] == "glot")
        result = {"task": task.name, "task_type": task.task_type, "metric": metric, "settings": asdict(settings),
                  "budget": {"name": settings.budget, "base": asdict(base), "grid": grid},
                  "backbone": base_bb.fingerprint(), "sizes": {k: len(v) for k, v in task.splits.items()},
                  "suite": {**suite, "dev_selected_glot": selected, "rows_done": done,
                            "glot_vs_training_free": glot_vs_training_free(summary, golds, metric, selected)},
                  "records": records, "summary": rows_out, "significance": significance,
                  "total_seconds": time.perf_counter() - t0}
        atomic_write_json(out_dir / "results.json", result)
        atomic_write_text(out_dir / "results.md", format_suite_table(result, curve))
        from glotpool.experiments.report import plot_bars

        plot_bars(rows_out, out_dir / "comparison.png", metric,
                  title=f"{task.name}, frozen {settings.backbone}: decoder suite, test {metric} ({settings.budget})")
        return result

    result = None
    bar = tqdm(total=len(rows), desc=f"decoder suite {task.name} ({settings.budget})", unit="row",
               disable=not settings.show_progress or None)
    for i, row in enumerate(rows, 1):
        bar.set_postfix_str(row.name)
        exp = exps[row.prompt]
        spec = adapt_spec(replace(PoolerSpec.parse(row.pooler), label=row.name,
                                  states=row.states(best, last, mix)), base_bb, settings.glot_defaults)
        chosen, recs, dev_table = tune_and_run(spec, exp.cache, exp.data, base, grid, settings.seeds,
                                               out_dir / "runs" / row.name, settings.head_options)
        records += [asdict(r) for r in recs]
        summary.append({**summary_row(row.name, chosen, recs, dev_table, metric), **_describe(row, best, last, mix)})
        if settings.probe == "sklearn" and (probe := probe_row(spec, exp, metric, label=row.name)) is not None:
            summary.append({**probe, **_describe(row, best, last, mix), "pooler": f"{row.pooler} + sklearn LR"})
        result = write(done=i)
        bar.update(1)
    bar.close()
    return result if result is not None else write(done=0)  # no row to run: still the (empty) table


def _is_training_free(r: dict) -> bool:
    """A training-free row: a parameter-free pooler under the linear head, or its sklearn probe row."""
    return r["pooler"].split(" + ")[0] not in LEARNED_POOLERS


def _dev_best(rows: list[dict], keep) -> str | None:
    """The label of the row with the best mean dev score among ``rows`` that ``keep``; ties: the first row."""
    kept = [r for r in rows if keep(r)]
    return max(kept, key=lambda r: r["dev"])["label"] if kept else None


def glot_vs_training_free(summary: list[dict], golds, metric: str, glot: str | None) -> dict | None:
    """Does the learned graph pooler beat what needs no training? The dev-selected GLOT row ``glot`` against the
    dev-selected training-free row (both picked by mean dev score, so test enters neither choice), by the paired test
    on the test rows. ``delta`` = GLOT − baseline with its 95 % interval; None until both kinds of row are done, or
    when the metric has no paired test."""
    kind = PAIRED_TEST_KIND.get(metric)
    base = _dev_best(summary, _is_training_free)
    if kind is None or glot is None or base is None:
        return None
    preds = {r["label"]: r["predictions"] for r in summary if r["label"] in (glot, base)}
    t = compare_to_best(preds, golds, kind, best=glot)[base]  # delta = baseline − GLOT
    return {"glot": glot, "baseline": base, "delta": -t.delta, "low": -t.high, "high": -t.low,
            "p_value": t.p_value, "method": t.method}


def _describe(row: SuiteRow, best: int, last: int, mix: tuple[int, ...]) -> dict:
    return {"pooler": row.pooler, "layer": row.layer_text(best, last, mix), "prompt": row.prompt or "—",
            "tokens": row.tokens}


def _mix_text(mix: dict | None) -> str:
    if not mix:
        return "—"
    return " ".join(f"L{l}:{w:.2f}" for l, w in zip(mix["layers"], mix["weights"])) + f" (γ {mix['gamma']:.2f})"


def format_suite_table(result: dict, curve: dict) -> str:
    s, suite, metric = result["settings"], result["suite"], result["metric"]
    sig = result.get("significance") or {}
    lines = [f"# {result['task']} — decoder suite on frozen {s['backbone']}", "",
             *table_intro(result, "same linear head for all rows"),
             f"Layers: hidden_states indices (0 = embeddings, {suite['last_layer']} = last); best dev layer "
             f"**{suite['best_layer']}** from the layer probe on dev (below); the mix learns ELMo weights over "
             f"layers {suite['mix_layers']}. Prompts: PromptEOL pools the final token, echo the second copy of the "
             f"text (tokens = text). ◆ = dev-selected GLOT: the GLOT row with the best mean dev {metric} (layer, "
             "prompt and tokens chosen on dev; test not used).", ""]
    if suite.get("rows_done", len(suite["rows"])) < len(suite["rows"]):
        left = [r["name"] for r in suite["rows"][suite["rows_done"]:]]
        lines += [f"**Partial: {suite['rows_done']} of {len(suite['rows'])} rows done** (not yet run: "
                  f"{', '.join(left)}); rerun the same command to resume.", ""]
    if suite["notes"]:
        lines += [*suite["notes"], ""]
    if (t := suite.get("glot_vs_training_free")) is not None:
        lines += [f"**Dev-selected GLOT vs dev-selected training-free baseline:** {t['glot']} − {t['baseline']} = "
                  f"{100 * t['delta']:+.1f} [{100 * t['low']:+.1f}, {100 * t['high']:+.1f}] points on test, "
                  f"p = {t['p_value']:.3f} ({t['method']}); both rows chosen by mean dev {metric}.", ""]
    lines += [f"| row | layer | prompt | tokens | test {metric} | dev {metric} | chosen | Δ vs best [95 % CI], p | "
              "trainable params | layer mix weights |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["summary"]:
        c = row_cells(r, sig)
        mark = " ◆" if r["label"] == suite["dev_selected_glot"] else ""
        lines.append(f"| {r['label']}{mark} | {r['layer']} | {r['prompt']} | {r['tokens']} | {c['test']} | "
                     f"{100 * r['dev']:.1f} | {c['chosen']} | {c['delta']} | {c['params']} | "
                     f"{_mix_text(r.get('layer_mix'))} |")
    curve_md = format_layer_table(curve).split("\n", 2)[2]  # the probe's table without its title
    lines += ["", "## Layer probe (dev)", "", curve_md]
    return "\n".join(lines).rstrip("\n") + "\n"
