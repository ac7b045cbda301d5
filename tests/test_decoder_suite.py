"""`glotpool compare --suite decoder` (prompt baselines, best dev layer, layer mix) and `train` on mixed states."""
import csv
import json

import numpy as np
import pytest

from glotpool.experiments.decoder_suite import DECODER_ROWS, cache_plan, mix_layers, select_rows
from test_layer_probe import write_splits


def test_row_list_shrinks_by_pattern_and_the_mix_set_holds_best_and_last():
    names = [r.name for r in DECODER_ROWS]
    assert names[:8] == ["mean", "last", "prompteol-last", "echo-mean",
                         "mean-best", "last-best", "prompteol-last-best", "echo-mean-best"]
    assert len(names) == 8 + 3 * 3 * 2 and len(set(names)) == len(names)
    assert {r.name: (r.layer, r.prompt, r.tokens) for r in DECODER_ROWS}["echo-mean-best"] == ("best", "echo", "text")
    assert {r.name for r in select_rows(DECODER_ROWS, ("glot-*",))} == {
        "glot-last", "glot-best", "glot-mix", "glot-last-echo", "glot-best-echo", "glot-mix-echo"}
    with pytest.raises(ValueError, match="match no row"):
        select_rows(DECODER_ROWS, ("glot-middle",))
    assert mix_layers(30, 14) == (5, 10, 14, 15, 20, 25, 30)
    assert mix_layers(6, 4, size=3) == (2, 4, 6)
    # the patterns' order is the run order (a glob's matches in row-list order), each row once
    order = [r.name for r in select_rows(DECODER_ROWS, ("glot-mix-echo", "mean", "glot-*-echo", "last"))]
    assert order == ["glot-mix-echo", "mean", "glot-last-echo", "glot-best-echo", "last"]
    rows = select_rows(DECODER_ROWS, ("mean", "prompteol-last", "glot-best-echo", "glot-mix-echo"))
    assert cache_plan(rows, 14, 30, (5, 14, 30)) == {None: (30,), "prompteol": (30,), "echo": (5, 14, 30)}


def _suite(backbone, paths, out, cache_dir, rows, seeds=(0,)):
    from glotpool.data import TaskSource
    from glotpool.experiments.compare import CompareSettings
    from glotpool.experiments.decoder_suite import run_decoder_suite
    from glotpool.training.trainer import TrainConfig

    source = TaskSource(task=None, train_file=str(paths["train"]), dev_file=str(paths["dev"]),
                        test_file=str(paths["test"]))
    settings = CompareSettings(backbone="minilm", source=source, suite="decoder", suite_rows=rows, seeds=seeds,
                               budget="fixed", train=TrainConfig(epochs=2, lr=3e-3, show_progress=False),
                               mix_size=3, glot_defaults={"hidden_dim": 16}, cache_dir=str(cache_dir),
                               show_progress=False)
    return run_decoder_suite(settings, out, backbone=backbone)


@pytest.mark.slow
def test_suite_runs_end_to_end_and_selects_on_dev_only(minilm, tmp_path):
    paths = write_splits(tmp_path)
    rows = ("mean", "prompteol-last", "echo-mean", "glot-last", "glot-mix")
    a = _suite(minilm, paths, tmp_path / "a", tmp_path / "cache", rows)
    s = a["suite"]
    assert [r["label"] for r in a["summary"]] == list(rows)
    assert s["last_layer"] == 6 and s["best_layer"] == a["suite"]["layer_curve"]["best_layer"]
    assert s["mix_layers"] == sorted({2, 4, 6, s["best_layer"]})
    assert s["caches"]["none"]["layers"] == s["mix_layers"] and s["caches"]["echo"]["layers"] == [6]
    assert s["caches"]["prompteol"]["layers"] == [6]
    glot = [r for r in a["summary"] if r["pooler"] == "glot"]
    assert s["dev_selected_glot"] == max(glot, key=lambda r: r["dev"])["label"]
    mix = next(r for r in a["summary"] if r["label"] == "glot-mix")["layer_mix"]
    assert mix["layers"] == s["mix_layers"] and sum(mix["weights"]) == pytest.approx(1.0)
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| echo-mean | last (6) | echo | text |" in table and "◆" in table and "γ" in table
    assert "## Layer probe (dev)" in table and "Partial" not in table and s["rows_done"] == len(rows)
    # the target check pairs the dev-best GLOT row with the dev-best training-free row (chosen on dev, not test)
    t, by = s["glot_vs_training_free"], {r["label"]: r for r in a["summary"]}
    assert t["glot"] == s["dev_selected_glot"]
    assert t["baseline"] == max(("mean", "prompteol-last", "echo-mean"), key=lambda k: by[k]["dev"])
    assert t["delta"] == pytest.approx(by[t["glot"]]["mean"] - by[t["baseline"]]["mean"])  # one seed: plain Δ
    assert t["low"] <= t["delta"] <= t["high"] and 0 <= t["p_value"] <= 1
    assert f"{t['glot']} − {t['baseline']} = {100 * t['delta']:+.1f}" in table
    # the table written after each row says what is still to run
    from glotpool.experiments.decoder_suite import format_suite_table

    curve = json.loads((tmp_path / "a" / "layers" / "results.json").read_text())
    partial = format_suite_table({**a, "suite": {**s, "rows_done": 2}}, curve)
    assert "**Partial: 2 of 5 rows done** (not yet run: echo-mean, glot-last, glot-mix)" in partial

    # the same data with every test label flipped: every choice (layer, mix set, dev-selected GLOT, each row's dev
    # score) is the same, because none reads test; the test scores flip
    flipped = tmp_path / "flipped.csv"
    with open(paths["test"], encoding="utf-8") as f, open(flipped, "w", newline="", encoding="utf-8") as g:
        rows_in = list(csv.DictReader(f))
        w = csv.DictWriter(g, ["label", "text"])
        w.writeheader()
        w.writerows({"label": {"positive": "negative", "negative": "positive"}[r["label"]], "text": r["text"]}
                    for r in rows_in)
    b = _suite(minilm, {**paths, "test": flipped}, tmp_path / "b", tmp_path / "cache", rows)
    for key in ("best_layer", "mix_layers", "dev_selected_glot"):
        assert b["suite"][key] == s[key], key
    assert b["suite"]["glot_vs_training_free"]["baseline"] == t["baseline"]
    assert b["suite"]["glot_vs_training_free"]["delta"] == pytest.approx(-t["delta"])  # flipped labels flip Δ
    assert [r["dev"] for r in b["summary"]] == [r["dev"] for r in a["summary"]]
    assert [r["chosen"] for r in b["summary"]] == [r["chosen"] for r in a["summary"]]
    for ra, rb in zip(a["summary"], b["summary"]):
        assert rb["mean"] == pytest.approx(1 - ra["mean"])  # test rows scored once, with the same model


@pytest.mark.slow
def test_train_with_a_prompt_and_a_layer_mix_saves_an_encoder_that_reproduces_training(minilm, tmp_path):
    from glotpool.cli import main
    from glotpool.encoder import Encoder
    from glotpool.states.cache import open_cache
    from glotpool.training.trainer import StateSelection

    paths = write_splits(tmp_path, sizes=(40, 20, 10))
    out = tmp_path / "m"
    assert main(["train", "--backbone", "minilm", "--train", str(paths["train"]), "--dev", str(paths["dev"]),
                 "--test", str(paths["test"]), "--pooler", "adapool", "--prompt", "echo", "--layers", "2,4,6",
                 "--tokens", "text", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["settings"]["states"] == {"layers": "all", "tokens": "text"}
    assert run["record"]["extra"]["layer_mix"]["layers"] == [2, 4, 6]
    enc = Encoder.from_pretrained(out / "model")
    assert enc.backbone.layers == (2, 4, 6) and enc.tokens == "text" and enc.backbone.prompt is not None
    cache = open_cache(out / "cache")
    texts = cache.texts[:5]
    h, m = StateSelection("all", "text").read(cache, np.arange(5))
    import torch

    with torch.inference_mode():
        want = enc.pooler(h, m).numpy()
    assert np.allclose(enc.encode(texts), want, atol=2e-2)  # fp16 cache vs fp32 forward


@pytest.mark.slow
def test_suite_smoke_on_smollm2(tmp_path):
    """The real decoder, 32 texts: echo prompting and a learned layer mix over it, one cache pass."""
    from glotpool.states.backbone import load_backbone

    smol = load_backbone("smollm2", max_length=64)
    paths = write_splits(tmp_path, sizes=(12, 10, 10))
    res = _suite(smol, paths, tmp_path / "s", tmp_path / "cache", ("echo-mean", "glot-mix-echo"))
    s = res["suite"]
    assert s["last_layer"] == 30 and len(s["layer_curve"]["points"]) == 31
    assert set(s["caches"]) == {"echo"} and s["caches"]["echo"]["layers"] == s["mix_layers"]
    assert 30 in s["mix_layers"] and s["best_layer"] in s["mix_layers"]
    assert s["dev_selected_glot"] == "glot-mix-echo"
