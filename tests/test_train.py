"""Heads, trainer, run records and `compare`: unit checks against independent formulas and a real end-to-end run."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glotpool.data import TextDataset, read_table, split_dataset
from glotpool.experiments.runs import PoolerSpec, run_one
from glotpool.training.heads import build_head
from glotpool.training.trainer import TrainConfig, length_bucketed_batches, prepare_splits, train_pooler

DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------------------------------------------
# heads


def test_cosent_matches_explicit_pair_sum():
    torch.manual_seed(0)
    head = build_head("sts", 8, loss="cosent", cosent_scale=20.0)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    gold = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.3, 1.0])
    cos = F.cosine_similarity(z1, z2, dim=-1)
    terms = [20.0 * (cos[j] - cos[i]) for i in range(6) for j in range(6) if gold[i] > gold[j]]
    expected = torch.log(1 + torch.exp(torch.stack(terms)).sum())
    torch.testing.assert_close(head.loss(head(z1, z2), gold), expected)


def test_infonce_is_symmetric_cross_entropy_over_in_batch_negatives():
    torch.manual_seed(1)
    head = build_head("retrieval", 8, temperature=0.1)
    q, d = torch.randn(5, 8), torch.randn(5, 8)
    s = torch.stack([torch.stack([F.cosine_similarity(q[i], d[j], dim=0) for j in range(5)]) for i in range(5)]) / 0.1
    row = -torch.log_softmax(s, 1).diagonal().mean()
    col = -torch.log_softmax(s, 0).diagonal().mean()
    torch.testing.assert_close(head.loss(head(q, d)), (row + col) / 2)


def test_pair_features_and_head_round_trip(tmp_path):
    head = build_head("pair", 4, num_labels=3, features="full")
    z1, z2 = torch.randn(2, 4), torch.randn(2, 4)
    feats = head.features(z1, z2)
    torch.testing.assert_close(feats, torch.cat([z1, z2, (z1 - z2).abs(), z1 * z2], -1))
    head.save_pretrained(tmp_path / "h")
    from glotpool.training.heads import TaskHead

    again = TaskHead.from_pretrained(tmp_path / "h")
    assert torch.equal(again(z1, z2), head(z1, z2))
    with pytest.raises(ValueError, match="unknown pair features"):
        build_head("pair", 4, features="sum")
    with pytest.raises(ValueError, match="unknown task type"):
        build_head("ranking", 4)


def test_length_buckets_cover_every_example_once_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    naive = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(1000), len(batches)))
    assert padded < 0.75 * naive


def test_pooler_spec_parsing():
    s = PoolerSpec.parse("glot-knn=glot:graph=knn,k=8,center=true,tau=0.5")
    assert (s.label, s.name, s.kwargs) == ("glot-knn", "glot", {"graph": "knn", "k": 8, "center": True, "tau": 0.5})
    assert PoolerSpec.parse("mean") == PoolerSpec("mean", (), "mean")
    assert PoolerSpec.parse("glot:tau=0.3").with_options(tau=0.6, hidden_dim=64).kwargs == {"tau": 0.3,
                                                                                           "hidden_dim": 64}
    with pytest.raises(ValueError, match="key=value"):
        PoolerSpec.parse("glot:tau")


# ---------------------------------------------------------------------------------------------------------------
# end to end on the real MiniLM package model


@pytest.fixture(scope="module")
def pang_lee_cache(minilm, tmp_path_factory):
    from glotpool.states.cache import build_cache

    # 600 real movie-review sentences (300 per polarity), disjoint from sentences.csv
    ds = read_table(DATA / "pang-lee" / "sentences-600.csv", text_col="text", label_col="label")
    tr, dev, te = split_dataset(ds, (0.7, 0.15, 0.15), seed=0)
    cache = build_cache(minilm, list(dict.fromkeys(ds.texts)), tmp_path_factory.mktemp("pl") / "cache",
                        show_progress=False)
    return cache, {"train": tr, "dev": dev, "test": te}


@pytest.mark.slow
def test_trained_glot_beats_chance_on_real_sentences(pang_lee_cache, tmp_path):
    cache, splits = pang_lee_cache
    data = prepare_splits(cache, splits, "single")
    assert data.label_names == ["negative", "positive"]
    rec = run_one(PoolerSpec.of("glot", hidden_dim=64), cache, data,
                  TrainConfig(epochs=8, lr=2e-3, patience=3, show_progress=False), seed=0, run_dir=tmp_path / "r",
                  save_model=True)
    # 90 balanced test sentences: chance is 0.5 (std 0.053); frozen MiniLM + GLOT is far above it
    assert rec.test["accuracy"] >= 0.68, rec
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["result"]["best_epoch"] == rec.best_epoch
    assert (tmp_path / "r" / "best" / "pooler" / "model.safetensors").is_file()
    assert "| test |" in (tmp_path / "r" / "results.md").read_text()


@pytest.mark.slow
def test_finished_runs_are_reused_not_retrained(pang_lee_cache, tmp_path, monkeypatch):
    cache, splits = pang_lee_cache
    data = prepare_splits(cache, splits, "single")
    cfg = TrainConfig(epochs=2, show_progress=False)
    first = run_one(PoolerSpec.of("mean"), cache, data, cfg, seed=3, run_dir=tmp_path / "m")

    def boom(*a, **k):
        raise AssertionError("retrained a finished run")

    monkeypatch.setattr("glotpool.experiments.runs.train_pooler", boom)
    again = run_one(PoolerSpec.of("mean"), cache, data, cfg, seed=3, run_dir=tmp_path / "m")
    assert again == first
    with pytest.raises(AssertionError, match="retrained"):  # other settings -> a new run
        run_one(PoolerSpec.of("mean"), cache, data, cfg, seed=4, run_dir=tmp_path / "m")


@pytest.mark.slow
def test_training_is_deterministic_under_seed(pang_lee_cache):
    cache, splits = pang_lee_cache
    data = prepare_splits(cache, splits, "single")
    cfg = TrainConfig(epochs=2, patience=0, show_progress=False)
    a = run_one(PoolerSpec.of("adapool"), cache, data, cfg, seed=7)
    b = run_one(PoolerSpec.of("adapool"), cache, data, cfg, seed=7)
    assert a.dev == b.dev and a.test == b.test
    c = run_one(PoolerSpec.of("adapool"), cache, data, replace(cfg, precision="bf16"), seed=7)
    assert abs(c.test["accuracy"] - a.test["accuracy"]) <= 0.1  # bf16 autocast trains the same model, roughly


@pytest.mark.slow
def test_sts_and_retrieval_train_end_to_end(pang_lee_cache):
    cache, splits = pang_lee_cache
    tr = splits["train"]
    n = len(tr)
    # pair each sentence with its neighbour; score 1 when both have the same polarity
    pair = lambda ds: TextDataset(ds.texts[:-1], ds.texts[1:],  # noqa: E731
                                  [float(a == b) for a, b in zip(ds.labels[:-1], ds.labels[1:])])
    data = prepare_splits(cache, {k: pair(v) for k, v in splits.items()}, "sts")
    assert data.score_range == (0.0, 1.0) and n > 10
    rec = run_one(PoolerSpec.of("mean"), cache, data, TrainConfig(epochs=1, show_progress=False), seed=0)
    assert set(rec.test) == {"pearson", "spearman", "loss"}  # loss: the dev tie-break, reported everywhere
    ret = prepare_splits(cache, {k: TextDataset(v.texts, v.texts) for k, v in splits.items()}, "retrieval")
    rec = run_one(PoolerSpec.of("adapool"), cache, ret, TrainConfig(epochs=1, show_progress=False), seed=0)
    assert rec.test["recall@1"] == 1.0  # query == document: every query finds itself first


def test_bad_splits_are_reported(pang_lee_cache):
    cache, splits = pang_lee_cache
    bad = TextDataset(splits["test"].texts, None, ["positive"] * (len(splits["test"]) - 1) + ["neutral"])
    with pytest.raises(ValueError, match=r"test split has label\(s\) \['neutral'\]"):
        prepare_splits(cache, {"train": splits["train"], "dev": splits["dev"], "test": bad}, "single")
    with pytest.raises(ValueError, match="'dev' split is empty"):
        prepare_splits(cache, {"train": splits["train"], "dev": TextDataset([], None, [])}, "single")
    with pytest.raises(ValueError, match="needs two texts"):
        prepare_splits(cache, splits, "pair")
    data = prepare_splits(cache, {"train": splits["train"], "test": splits["test"]}, "single")
    from glotpool import build_pooler

    with pytest.raises(ValueError, match="needs a 'dev' split"):
        train_pooler(build_pooler("mean", in_dim=cache.dim), build_head("single", cache.dim), cache, data,
                     TrainConfig(show_progress=False))


@pytest.mark.slow
def test_compare_on_local_files(minilm, tmp_path):
    from glotpool.data import TaskSource
    from glotpool.experiments.compare import CompareSettings, run_compare

    settings = CompareSettings(source=TaskSource(task=None, data_file=str(DATA / "pang-lee" / "sentences.csv")),
                               poolers=("mean", "glot:hidden_dim=32"), seeds=(0, 1), budget="fixed",
                               train=TrainConfig(epochs=2, show_progress=False), show_progress=False)
    result = run_compare(settings, tmp_path / "cmp", backbone=minilm)
    assert [r["label"] for r in result["summary"]] == ["mean", "glot:hidden_dim=32"]
    assert all(r["n"] == 2 for r in result["summary"])
    assert all(rec["train_config"]["epochs"] == 2 for rec in result["records"])  # fixed: exactly as given
    assert result["significance"]["best"] in ("mean", "glot:hidden_dim=32")
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "| glot:hidden_dim=32 |" in table and "±" in table
    from PIL import Image

    with Image.open(tmp_path / "cmp" / "comparison.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_sweep_grid_parsing():
    from glotpool.experiments.sweep import parse_grid

    assert parse_grid(["tau=0.0,0.2", "conv=gat,gcn", "layers=1,2"]) == {
        "tau": [0.0, 0.2], "conv": ["gat", "gcn"], "num_layers": [1, 2]}
    with pytest.raises(ValueError, match="key=v1,v2"):
        parse_grid(["tau"])


@pytest.mark.slow
def test_sweep_on_a_preset_reports_density_per_run(minilm, tmp_path, monkeypatch):
    import csv

    from glotpool.data import TaskSource
    from glotpool.experiments.sweep import SweepSettings, run_sweep

    monkeypatch.setenv("GLOTPOOL_DATA", str(DATA))  # the shipped pang-lee fixture in the fetched-data layout
    settings = SweepSettings(source=TaskSource("pang-lee"), grid={"tau": [0.2, 0.8]}, base_options={"hidden_dim": 16},
                             seeds=(0, 1), budget="fixed", train=TrainConfig(epochs=1, show_progress=False),
                             show_progress=False)
    result = run_sweep(settings, tmp_path / "sw", backbone=minilm)
    assert len(result["rows"]) == 4
    assert all(r["best_epoch"] == 1 for r in result["rows"])  # fixed: exactly the given one epoch
    rows = list(csv.DictReader(open(tmp_path / "sw" / "runs.csv")))
    dens = {r["tau"]: float(r["edges_per_token"]) for r in rows}
    assert dens["0.2"] > dens["0.8"] >= 1.0  # a lower threshold keeps more edges
    assert (tmp_path / "sw" / "sweep_tau.png").stat().st_size > 5000
    assert "| 0.2 |" in (tmp_path / "sw" / "summary.md").read_text()


@pytest.mark.slow
def test_sweep_tunes_each_point_on_dev_and_tests_it_against_the_best(minilm, tmp_path, monkeypatch):
    """Under the converged budget every sweep point gets its own dev-chosen lr (seed 0 over the grid, the other
    seeds at the choice), and the summary carries compare's paired test against the best point and the dev pick."""
    import csv

    from glotpool.data import TaskSource
    from glotpool.experiments.sweep import SweepSettings, run_sweep

    monkeypatch.setenv("GLOTPOOL_DATA", str(DATA))
    settings = SweepSettings(source=TaskSource("pang-lee"), grid={"tau": [0.2, 0.8]}, base_options={"hidden_dim": 16},
                             seeds=(0, 1), train_grid={"lr": [1e-4, 1e-2]}, show_progress=False)
    result = run_sweep(settings, tmp_path / "sw", backbone=minilm)
    assert result["budget"]["name"] == "converged" and result["budget"]["base"]["schedule"] == "cosine"
    rows = list(csv.DictReader(open(tmp_path / "sw" / "runs.csv")))
    assert len(rows) == 4  # 2 points x 2 seeds at the chosen lr (the grid's other point ran with seed 0 only)
    tried = sum(len(point["dev_grid"]) for point in result["summary"])
    assert len(list((tmp_path / "sw" / "runs").glob("*/lr-*/seed-0/run.json"))) == tried
    for point in result["summary"]:
        dev = point["dev_grid"]  # seed 0's dev accuracy at each lr: the grid, widened past the edge dev chose
        assert set(dev) >= {"lr-0.0001", "lr-0.01"} and 3 <= len(dev) <= 4
        assert dev[f"lr-{point['chosen']['lr']:g}"] == max(dev.values())
        tau_rows = [r for r in rows if float(r["tau"]) == point["point"]["tau"]]
        assert {float(r["lr"]) for r in tau_rows} == {point["chosen"]["lr"]}
        assert point["mean"] == pytest.approx(np.mean([float(r["test_accuracy"]) for r in tau_rows]))
    sig = result["significance"]
    best = max(result["summary"], key=lambda r: r["mean"])
    assert sig["best"] == best["label"] and set(sig["tests"]) == {r["label"] for r in result["summary"]} - {sig["best"]}
    picked = max(result["summary"], key=lambda r: r["dev"])["label"]
    assert result["dev_selected"] == picked
    summary = (tmp_path / "sw" / "summary.md").read_text()
    assert "Δ vs best" in summary and "best |" in summary and "lr ∈ {0.0001, 0.01}" in summary
    picked_line = next(line for line in summary.splitlines() if line.startswith(f"| {picked.split('=')[1]} |"))
    assert picked_line.count("◆") == 1
