"""Figures (matplotlib, Agg backend: no display needed). Every function writes one PNG atomically."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from glotpool.io_utils import atomic_path

COLORS = {"glot": "#d62728", "adapool": "#1f77b4", "mean": "#2ca02c", "max": "#9467bd", "cls": "#8c564b",
          "last": "#8c564b", "latent_attention": "#ff7f0e", "pma": "#17becf", "weighted_mean": "#7f7f7f",
          "mlp_attention": "#bcbd22"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)


def _color(label: str, i: int) -> str:
    base = label.split("=")[0].split(":")[0]
    return COLORS.get(label, COLORS.get(base, f"C{i % 10}"))


def plot_accuracy_vs_ratio(summary: dict, budget: str, path: str | Path, title: str = "") -> None:
    """Eval accuracy vs distractor ratio, one line per pooler, seed std as error bars (paper Fig. 3 style)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, cells) in enumerate(summary.get(budget, {}).items()):
        ratios = sorted(cells, key=float)
        x = [float(r) for r in ratios]
        y = [100 * cells[r]["mean"] for r in ratios]
        e = [100 * cells[r]["std"] for r in ratios]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label, color=_color(label, i),
                    linewidth=2.2 if label.startswith("glot") else 1.4)
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("distractor ratio r")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_ylim(40, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_token_weights(items: list[dict], path: str | Path, title: str = "") -> None:
    """For each sentence and pooler, the weights π over its tokens; needle tokens shaded, top-3 annotated.

    ``items``: ``[{"tokens": [str], "needle": [bool], "weights": {label: array [L]}, "label": int}]``.
    """
    plt = _plt()
    rows = [(it, lab) for it in items for lab in it["weights"]]
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 1.9 * len(rows)), squeeze=False)
    for ax, (it, lab) in zip(axes[:, 0], rows):
        w = np.asarray(it["weights"][lab], dtype=float)
        x = np.arange(len(w))
        for j, inside in enumerate(it["needle"]):
            if inside:
                ax.axvspan(j - 0.5, j + 0.5, color="#ffe08a", zorder=0)
        ax.bar(x, w, width=0.9, color=_color(lab, 0))
        top = np.argsort(-w)[:3]
        for rank, j in enumerate(top, 1):
            ax.annotate(f"{rank}:{it['tokens'][j]}", (j, w[j]), xytext=(0, 2), textcoords="offset points",
                        ha="center", fontsize=7, color="black")
        hit = sum(bool(it["needle"][j]) for j in top)
        cls = "affirmative" if it["label"] == 1 else "negated"
        ax.set_ylabel(lab, fontsize=8)
        ax.set_xlim(-1, len(w))
        ax.set_ylim(0, max(w.max() * 1.25, 1e-6))
        ax.tick_params(labelsize=7)
        ax.set_title(f"{cls} sentence, {len(w)} tokens — {lab}: {hit}/3 top tokens in the needle", fontsize=8,
                     loc="left")
    axes[-1, 0].set_xlabel("token position")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_bars(rows: list[dict], path: str | Path, metric: str, title: str = "") -> None:
    """Bar chart with seed std: ``rows = [{"label", "mean", "std"}]`` (values in [0, 1])."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows)), 3.8))
    labels = [r["label"] for r in rows]
    means = [100 * r["mean"] for r in rows]
    stds = [0 if math.isnan(r["std"]) else 100 * r["std"] for r in rows]
    ax.bar(labels, means, yerr=stds, capsize=4, color=[_color(lab, i) for i, lab in enumerate(labels)])
    for i, m in enumerate(means):
        ax.text(i, m + 0.5, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    finite = [m for m in means if not math.isnan(m)]
    lo = min(finite) if finite else 0
    ax.set_ylim(max(0, lo - 10), min(100, max(finite or [100]) + 5))
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_lines(xs: list, series: dict[str, tuple[list, list]], path: str | Path, xlabel: str, ylabel: str,
               title: str = "") -> None:
    """Generic metric-vs-value plot: ``series = {label: (means, stds)}`` aligned with ``xs``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    numeric = all(isinstance(x, (int, float)) for x in xs)
    pos = xs if numeric else list(range(len(xs)))
    for i, (label, (m, s)) in enumerate(series.items()):
        ax.errorbar(pos, [100 * v for v in m], yerr=[100 * v for v in s], marker="o", capsize=3, label=label,
                    color=f"C{i % 10}")
    if not numeric:
        ax.set_xticks(pos, [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_layer_curve(points: list[dict], best: int, path: str | Path, metric: str, title: str = "") -> None:
    """Dev metric vs hidden layer (``points = [{"layer", "dev", "density"}]``), the best layer marked, GLOT's graph
    density on a second axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.6, 0.22 * len(points) + 3), 3.8))
    x = [p["layer"] for p in points]
    ax.plot(x, [100 * p["dev"] for p in points], marker="o", color=COLORS["mean"], label=f"dev {metric} (probe)")
    ax.axvline(best, color="grey", linestyle=":", linewidth=1)
    b = next(p for p in points if p["layer"] == best)
    ax.annotate(f"best: layer {best}", (best, 100 * b["dev"]), xytext=(4, 6), textcoords="offset points", fontsize=8)
    ax.set_xlabel("hidden layer (0 = embeddings)")
    ax.set_ylabel(f"dev {metric} (%)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, [p["density"] for p in points], linestyle="--", color=COLORS["glot"], label="GLOT graph density")
    ax2.set_ylabel("graph density (default τ)", color=COLORS["glot"])
    ax2.set_ylim(0, 1.05)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    _save(fig, path)
