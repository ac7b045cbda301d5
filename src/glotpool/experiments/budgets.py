"""Training protocols ("budgets") and the per-pooler hyperparameter selection on dev they share.

=============  =================================================================================================
``converged``  (default) up to 60 epochs, cosine decay from the first step (no warm-up), early stopping on the dev
               metric (patience 8; ties broken by dev loss); lr × weight decay picked **per pooler** on dev from
               :data:`CONVERGED_GRID` with the first seed (the second where the first learned nothing; the lr
               grid grows a step past its edge, up to :data:`MAX_LR_EXTENSIONS` times, while the best lr sits on
               that edge), every seed then trained at the chosen point
``paper``      the published script's setting: 3 epochs at lr 1e-4, constant, no early stopping, no selection
``fixed``      exactly the given TrainConfig (lr, epochs, ...), no selection
=============  =================================================================================================

The test split is never looked at before the choice is made: selection reads dev only, and each run evaluates test
once with its best-dev-epoch weights.

Why no warm-up: the heads are small and reach their best dev epoch within 2–6 epochs on the real tasks, where data,
not step size, limits them; a warm-up over 5 % of 60 epochs (3 epochs) spent those epochs at a low rate. Measured on
SNLI (MiniLM, 5000 pairs, seed 0, lr 1e-3): PMA's dev accuracy 57.6 with that warm-up, 58.7 without (and 58.6 ± 0.2
over 3 seeds under the old constant-rate fixed budget).
"""
from __future__ import annotations

import itertools
import math
import sys
from dataclasses import replace
from pathlib import Path

from glotpool.experiments.runs import PoolerSpec, RunRecord, learned_anything, run_one
from glotpool.states.cache import TokenCache
from glotpool.training.heads import default_metric
from glotpool.training.trainer import CachedSplits, TrainConfig, _is_better, resolve_metric

BUDGET_NAMES = ("converged", "paper", "fixed")
CONVERGED = TrainConfig(epochs=60, lr=1e-3, weight_decay=0.01, patience=8, schedule="cosine", warmup=0.0)
CONVERGED_GRID = {"lr": (3e-4, 1e-3, 3e-3, 1e-2), "weight_decay": (0.0, 0.01)}
MAX_LR_EXTENSIONS = 2  # steps tune_and_run adds beyond the lr grid's edge while the dev-best lr sits on it
PAPER = TrainConfig(epochs=3, lr=1e-4, batch_size=32, patience=0)


def budget_config(budget: str, given: TrainConfig) -> tuple[TrainConfig, dict]:
    """``(base config, grid)`` of a budget; ``given`` supplies what the budget does not fix (device, precision,
    batch size for ``converged``, everything for ``fixed``)."""
    keep = dict(device=given.device, precision=given.precision, class_weights=given.class_weights,
                metric=given.metric, eval_batch_size=given.eval_batch_size, show_progress=given.show_progress)
    if budget == "converged":
        return replace(CONVERGED, batch_size=given.batch_size, grad_clip=given.grad_clip, **keep), dict(CONVERGED_GRID)
    if budget == "paper":
        return replace(PAPER, **keep), {}
    if budget == "fixed":
        return given, {}
    raise ValueError(f"unknown budget {budget!r}; valid: {', '.join(BUDGET_NAMES)}")


def protocol(budget: str, given: TrainConfig, grid: dict | None, task_type: str) -> tuple[TrainConfig, dict, str]:
    """The ``(base TrainConfig, dev grid, metric)`` every row of one experiment is trained and selected under.

    ``grid`` (e.g. ``{"lr": [1e-3, 1e-2]}``) replaces the converged budget's :data:`CONVERGED_GRID`; the other budgets
    select nothing, so a grid with them is an error rather than silently unused.
    """
    base, default_grid = budget_config(budget, replace(given, show_progress=False))
    if grid is not None and budget != "converged":
        raise ValueError(f"a dev grid ({grid}) is searched by the converged budget only, not by {budget!r}; "
                         "drop the grid or use budget 'converged'")
    return base, dict(grid) if grid is not None else default_grid, base.metric or default_metric(task_type)


def describe(budget: str, base: dict, grid: dict, per: str = "pooler") -> str:
    """One line naming a budget's protocol for a report, from its base config (``asdict``) and dev grid."""
    if budget == "paper":
        return "budget `paper`: 3 epochs at lr 1e-4 (the published setting), no selection"
    if budget == "fixed":
        return f"budget `fixed`: lr {base['lr']:g}, up to {base['epochs']} epochs, the same for every {per}"
    warm = f"{base['warmup']:.0%} warm-up + " if base.get("warmup") else ""
    schedule = {"cosine": "cosine decay", "linear": "linear decay", "constant": "a constant rate"}[base["schedule"]]
    text = (f"budget `converged`: up to {base['epochs']} epochs, {warm}{schedule}, early stopping on dev "
            f"(patience {base['patience']})")
    values = {k: ", ".join(f"{v:g}" for v in vals) for k, vals in grid.items()}
    if all(len(v) == 1 for v in grid.values()):
        return text + "; at " + ", ".join(f"{k} {v}" for k, v in values.items()) + " (a one-point grid: no selection)"
    widen = (f" (lr widened by up to {MAX_LR_EXTENSIONS} steps past an edge of its grid while dev chose that edge)"
             if len(grid.get("lr", ())) > 1 else "")
    return (text + f"; per {per} " + ", ".join(f"{k} ∈ {{{v}}}" for k, v in values.items())
            + " chosen on dev with the first seed (the second where the first learned nothing)" + widen)


def point_name(point: dict) -> str:
    """The folder name of a grid point under a run root, e.g. ``lr-0.001_wd-0``."""
    short = {"lr": "lr", "weight_decay": "wd"}
    return "_".join(f"{short.get(k, k)}-{v:g}" for k, v in point.items()) or "fixed"


def tune_and_run(spec: PoolerSpec, cache: TokenCache, data: CachedSplits, base: TrainConfig, grid: dict,
                 seeds: tuple[int, ...], run_root: Path, head_options: dict | None = None,
                 save_model: bool = True, widen_lr: int = MAX_LR_EXTENSIONS) -> tuple[dict, list[RunRecord], dict]:
    """Pick ``grid``'s best point on dev with ``seeds[0]``, then train every seed there (each run resumable).

    While the best lr sits on an edge of the grid's lr values, the grid grows one step past it
    (:func:`beyond_edge`), at most ``widen_lr`` times (0: exactly ``grid``). A point whose first-seed run learned
    nothing (:func:`~glotpool.experiments.runs.learned_anything`: it collapsed to the class prior) is scored by one
    retry with ``seeds[1]``, the run that seed reuses if the point wins: one collapsed seed does not rule an lr out
    (or send the widening the wrong way), and the table still reports every seed, the collapsed one included.
    Returns ``(chosen point, one record per seed at that point, {point name: dev metric of every point tried})``.
    ``save_model`` keeps the first seed's weights (of every grid point: the winner is not known in advance).
    """
    metric, higher = resolve_metric(base, data.task_type)
    grid = {k: tuple(v) for k, v in grid.items()}

    def run(point, seed):
        return run_one(spec, cache, data, replace(base, **point), seed=seed, head_options=head_options,
                       run_dir=run_root / point_name(point) / f"seed-{seed}", save_model=save_model and seed == seeds[0])

    def scored(point) -> tuple[RunRecord, RunRecord]:
        """(the first seed's record, the record that scores the point: that one, or its retry)"""
        rec = run(point, seeds[0])
        if learned_anything(rec) is False and len(seeds) > 1:
            print(f"note: {spec.label} at {point_name(point)}: seed {seeds[0]} learned nothing (train loss stayed at "
                  f"the class prior's); scoring the point by seed {seeds[1]}", file=sys.stderr)
            return rec, run(point, seeds[1])
        return rec, rec

    first: dict[str, tuple[dict, RunRecord, RunRecord]] = {}  # point name -> (point, *scored(point)), as tried
    for _ in range(1 + widen_lr):
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, combo))
            if point_name(point) not in first:
                first[point_name(point)] = point, *scored(point)
        best = None
        for name, (point, _, rec) in first.items():
            if best is None or _is_better(rec.dev.get(metric), first[best][2].dev.get(metric), higher,
                                          rec.dev.get("loss"), first[best][2].dev.get("loss")):
                best = name
        wider = beyond_edge(grid.get("lr", ()), first[best][0].get("lr"))
        if wider is None:
            break
        grid["lr"] = tuple(sorted(grid["lr"] + (wider,)))
    chosen, best_record, _ = first[best]
    records = [best_record] + [run(chosen, s) for s in seeds[1:]]
    dev_table = {name: rec.dev.get(metric) for name, (_, _, rec) in first.items()}
    return chosen, records, dev_table


def beyond_edge(values: tuple[float, ...], chosen: float | None) -> float | None:
    """The next value to try when dev chose an edge of the log grid ``values`` (>= 2 values), else None.

    A best point on the edge says the optimum may lie beyond it, so that choice was not shown to be tuned; the step
    beyond is the grid's own ratio at that edge, snapped to the 1-3-10 ladder (3e-4 below {3e-4, 1e-3, ...} gives
    1e-4; 3e-2 above {..., 1e-2, 3e-2} gives 1e-1; a decade grid steps a decade). The one rule for every grid tuned
    on dev: the converged budget's learning rates and the sklearn probe's ``C``."""
    grid = sorted(set(values))
    if chosen is None or len(grid) < 2 or grid[0] < chosen < grid[-1]:
        return None
    edge, neighbour = (grid[0], grid[1]) if chosen == grid[0] else (grid[-1], grid[-2])
    target = edge * edge / neighbour
    ladder = [m * 10.0 ** e for e in range(math.floor(math.log10(target)) - 1, math.floor(math.log10(target)) + 2)
              for m in (1, 3)]
    snapped = min(ladder, key=lambda v: abs(math.log(v / target)))
    return float(f"{snapped:.0e}") if snapped not in grid and (snapped - edge) * (target - edge) > 0 else target
