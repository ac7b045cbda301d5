"""The stress runner end to end on the real MiniLM package model (small sizes), its report and figures."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from glotpool.data.stressgen import StressConfig, make_stress_split, stress_splits
from glotpool.experiments.stress import StressSettings, run_stress


def test_dev_split_keeps_twins_together():
    ex = make_stress_split(StressConfig(ratio=0.5, length=20), 40, seed=0)
    splits = stress_splits({"train": ex, "eval": ex[:4]}, 0.25, seed=1)
    train, dev = splits["train"], splits["dev"]
    assert len(dev) == 10 and len(train) == 30 and len(splits["test"]) == 4
    pair_of = {e.text: e.pair_id for e in ex}
    assert not {pair_of[t] for t in train.texts} & {pair_of[t] for t in dev.texts}


@pytest.mark.slow
def test_small_stress_run_glot_beats_mean_at_high_ratio(minilm, tmp_path):
    settings = StressSettings(ratios=(0.9,), poolers=("mean", "glot"), seeds=(0,), budgets=("converged",),
                              train_grid={"lr": (1e-3,)}, n_train=240, n_eval=100, show_progress=False)
    result = run_stress(settings, tmp_path / "s", backbone=minilm)
    cells = result["summary"]["converged"]
    glot, mean = cells["glot"]["0.9"]["mean"], cells["mean"]["0.9"]["mean"]
    assert glot >= 0.85 and glot > mean + 0.15, (glot, mean)
    # the gap is tested: one seed each, so McNemar on the 100 eval sentences; GLOT is the best, mean far below it
    assert cells["glot"]["0.9"]["vs_best"] is None
    test = cells["mean"]["0.9"]["vs_best"]
    assert "McNemar" in test["method"] and test["p_value"] < 0.01
    assert test["delta"] == pytest.approx(mean - glot)
    assert all(r["train_config"]["schedule"] == "cosine" and r["chosen"] == {"lr": 1e-3} for r in result["records"])
    # graph density is reported for every GLOT run
    rec = next(r for r in result["records"] if r["label"] == "glot")
    assert 1.0 <= rec["graph"]["edges_per_token"] < 40
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(saved["records"]) == 2
    table = (tmp_path / "s" / "results.md").read_text()
    assert "| glot | **" in table and "| mean | " in table and "| mean | **" not in table
    assert (tmp_path / "s" / "data" / "ratio-0.9.jsonl").is_file()
    with Image.open(tmp_path / "s" / "accuracy_vs_ratio_converged.png") as im:
        assert im.size[0] >= 600 and im.size[1] >= 400
    with Image.open(tmp_path / "s" / "token_weights.png") as im:
        assert im.size[0] >= 1000 and im.size[1] >= 500
    # a rerun reuses every finished run and the cache
    again = run_stress(settings, tmp_path / "s", backbone=minilm)
    assert again["summary"] == result["summary"]
    assert again["total_seconds"] < result["total_seconds"]


def test_stress_table_names_a_seed_that_learned_nothing():
    """A collapsed seed (train loss stayed at the class prior's) stays in its cell's mean and is named beside it;
    a seed that learned, or a record from before the check (no train_loss), is not."""
    from glotpool.experiments.stress import format_table, summarize

    def rec(label, seed, acc, loss_min):
        extra = {} if loss_min is None else {"train_loss": {"min": loss_min, "constant": 0.693}}
        return {"ratio": 0.9, "budget": "converged", "label": label, "seed": seed, "test": {"accuracy": acc},
                "extra": extra, "test_predictions": None, "chosen": {"lr": 1e-3}}

    records = [rec("glot", 0, 0.9, 0.2), rec("glot", 1, 0.5, 0.69), rec("glot", 2, 0.8, None),
               rec("mean", 0, 0.6, 0.5)]
    settings = StressSettings(ratios=(0.9,), poolers=("mean", "glot"), seeds=(0, 1, 2), budgets=("converged",))
    summary = summarize(records, settings, golds={})
    glot = summary["converged"]["glot"]["0.9"]
    assert glot["learned_nothing"] == [1] and glot["mean"] == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert "learned_nothing" not in summary["converged"]["mean"]["0.9"]
    table = format_table(summary, settings, [], {"converged": {"base": {"epochs": 60, "schedule": "cosine",
                                                                       "patience": 8}, "grid": {"lr": (1e-3,)}}})
    glot_line = next(line for line in table.splitlines() if line.startswith("| glot |"))
    mean_line = next(line for line in table.splitlines() if line.startswith("| mean |"))
    assert "(seed 1 learned nothing)" in glot_line and "learned nothing" not in mean_line
