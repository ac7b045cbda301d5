"""The end-to-end main job: the stress test at four ratios and the real-task comparison, one report.

    glotpool run --out runs/main

    glotpool run --smoke --out runs/smoke     (the same wiring at a tiny size: under 3 minutes; CI runs it)

Sized to finish in about 15 minutes on a 2-core CPU with the embedded MiniLM package model: the stress test at
r ∈ {0.2, 0.5, 0.8, 0.9} with the converged budget and one seed (the full `glotpool stress` runs three), and the Pang & Lee
sentence-polarity comparison. Everything is cached and resumable, so a rerun after an interruption continues.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from glotpool.io_utils import atomic_write_text


@dataclass
class MainJobSettings:
    backbone: str = "minilm"
    stress_seeds: tuple[int, ...] = (0,)  # one seed: `glotpool stress` runs three (the 15-minute size)
    stress_ratios: tuple[float, ...] = (0.2, 0.5, 0.8, 0.9)
    stress_budgets: tuple[str, ...] = ("converged",)
    # one grid point keeps the 15-minute size; lr 1e-2 is what dev chose for every pooler at every ratio in the full
    # 3-seed run (docs/results/stress-minilm-converged); at 1e-3 the linear heads are under-trained
    stress_grid: dict | None = field(default_factory=lambda: {"lr": (1e-2,), "weight_decay": (0.01,)})
    stress_n_train: int = 1000  # `glotpool stress` uses 2000; caching 4 ratios x 2500 long texts alone took 5.5 min
    stress_n_eval: int = 500
    stress_max_epochs: int | None = None  # cap the budget's epochs (the smoke run)
    compare_task: str | None = "pang-lee"
    compare_seeds: tuple[int, ...] = (0, 1, 2)
    compare_max_train: int | None = None
    compare_budget: str = "converged"
    # the converged budget with a 2-point lr grid (weight decay 0.01): the main job's 15-minute size; `glotpool
    # compare` searches the full CONVERGED_GRID
    compare_grid: dict | None = field(default_factory=lambda: {"lr": (1e-3, 1e-2), "weight_decay": (0.01,)})
    compare_epochs: int | None = None  # with compare_budget="fixed"
    data_dir: str | None = None
    show_progress: bool = True

    @classmethod
    def smoke(cls, **overrides) -> "MainJobSettings":
        """The same wiring end to end at a tiny size (CI runs it from an empty data folder): fetch, cache, stress
        at one ratio with one seed, a one-seed comparison on 400 training sentences, the report and figures."""
        small = dict(stress_seeds=(0,), stress_ratios=(0.9,), stress_n_train=200, stress_n_eval=100,
                     stress_max_epochs=3, compare_seeds=(0,), compare_max_train=400, compare_budget="fixed",
                     compare_grid=None, compare_epochs=3)  # "fixed" searches no grid (protocol() refuses one)
        return cls(**{**small, **overrides})


def run_main_job(s: MainJobSettings, out_dir: str | Path) -> str:
    from dataclasses import replace

    from glotpool.data import TaskSource
    from glotpool.data.fetch import CORPORA, fetch_corpora
    from glotpool.experiments.compare import CompareSettings, run_compare
    from glotpool.experiments.stress import StressSettings, run_stress
    from glotpool.states.backbone import load_backbone

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    if s.compare_task in CORPORA:  # first: a download fault must fail in seconds, not after the stress test
        fetch_corpora(s.data_dir, only=s.compare_task)
    backbone = load_backbone(s.backbone)
    sections = [f"# glotpool report — frozen {s.backbone}", ""]
    run_stress(StressSettings(backbone=s.backbone, ratios=s.stress_ratios, seeds=s.stress_seeds,
                              budgets=s.stress_budgets, train_grid=s.stress_grid, n_train=s.stress_n_train,
                              n_eval=s.stress_n_eval,
                              max_epochs=s.stress_max_epochs, show_progress=s.show_progress),
               out_dir / "stress", backbone=backbone)
    sections += [(out_dir / "stress" / "results.md").read_text().replace("# Stress test", "## Stress test", 1)
                 .replace("\n## ", "\n### "), "",
                 "![accuracy vs ratio](stress/accuracy_vs_ratio_converged.png)", "",
                 "![token weights](stress/token_weights.png)", ""]
    if s.compare_task:
        source = TaskSource(task=s.compare_task, data_dir=s.data_dir, max_train=s.compare_max_train)
        settings = CompareSettings(backbone=s.backbone, source=source, seeds=s.compare_seeds,
                                   budget=s.compare_budget, grid=s.compare_grid, show_progress=s.show_progress)
        if s.compare_epochs is not None:
            settings.train = replace(settings.train, epochs=s.compare_epochs)
        run_compare(settings, out_dir / f"compare-{s.compare_task}", backbone=backbone)
        sections += [(out_dir / f"compare-{s.compare_task}" / "results.md").read_text().replace("# ", "## ", 1), "",
                     f"![comparison](compare-{s.compare_task}/comparison.png)", ""]
    sections.append(f"_Total time {time.perf_counter() - t0:.0f} s (cached steps are reused on reruns)._")
    report = "\n".join(sections) + "\n"
    atomic_write_text(out_dir / "report.md", report)
    return report
