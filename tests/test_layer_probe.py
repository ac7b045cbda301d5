"""States selection in a run's spec (layer= / mix= / tokens=) and `glotpool layers`, the per-layer probe curve."""
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from glotpool.experiments.runs import PoolerSpec, run_settings, states_text
from glotpool.training.trainer import CachedSplit, CachedSplits, StateSelection, TrainConfig

DATA = Path(__file__).parent / "data"


def write_splits(folder: Path, sizes=(60, 40, 30)) -> dict:
    """Small balanced train / dev / test CSVs of real Pang & Lee sentences (disjoint)."""
    rows = list(csv.DictReader(open(DATA / "pang-lee" / "sentences-600.csv", encoding="utf-8")))
    starts, paths = (0, 300, 500), {}
    for name, start, n in zip(("train", "dev", "test"), starts, sizes):
        paths[name] = folder / f"{name}.csv"
        with open(paths[name], "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["label", "text"])
            w.writeheader()
            w.writerows(rows[start:start + n])
    return paths


def test_state_options_parse_into_a_selection_not_pooler_options():
    spec = PoolerSpec.parse("glot:mix=all,graph_layer=-1,tau=0.4")
    assert spec.states == StateSelection("all") and spec.kwargs == {"graph_layer": -1, "tau": 0.4}
    assert spec.label == "glot:mix=all,graph_layer=-1,tau=0.4"
    assert PoolerSpec.parse("glot:mix=4+8+12").states.layers == (4, 8, 12)
    mean = PoolerSpec.parse("mean:tokens=text,layer=-8")
    assert mean.states == StateSelection(-8, "text") and mean.kwargs == {}
    assert states_text(mean.states) == "layer=-8,tokens=text"
    assert PoolerSpec.parse("glot").states.is_default
    for bad, why in (("glot:layer=3,mix=all", "not both"), ("glot:mix=4", "is one layer"),
                     ("glot:mix=a+b", "e.g. mix=4"), ("mean:tokens=prompt", "tokens must be"),
                     ("mean:layer=last", "is an int")):
        with pytest.raises(ValueError, match=why):
            PoolerSpec.parse(bad)


def test_existing_specs_keep_their_run_keys():
    """Runs finished before state selections existed (docs/results) must still be found by their resume key: a
    spec reading the plain states has exactly the old settings (hashes computed with the code before #20)."""
    data = CachedSplits("single", {"train": CachedSplit(np.arange(4), None, np.array([0, 1, 0, 1])),
                                   "dev": CachedSplit(np.arange(4, 6), None, np.array([1, 0]))}, ["neg", "pos"])
    golden = {"glot:tau=0.4,hidden_dim=32": "72a765b3eab48abd25be8e5e24916ea89e15a28ae11db431068eaa979217d456",
              "mean": "f441b9694686c65977538b733abdeea59a3be5ba89f1033c8c33807b2fa2ab2e",
              "cls-last=last": "46957bd126bb262e97dc067847d89524ccb1d0dd6ade6e349dfe652a96f3b3e5"}
    cfg = TrainConfig(epochs=3, seed=1)
    for text, digest in golden.items():
        settings = run_settings(PoolerSpec.parse(text), "k" * 64, data, cfg)
        assert "states" not in settings
        assert hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest() == digest, text
    mixed = run_settings(PoolerSpec.parse("glot:mix=all"), "k" * 64, data, cfg)
    assert mixed["states"] == {"layers": "all", "tokens": "all"}  # a selection is part of the key


@pytest.mark.slow
def test_layers_command_curve_has_one_point_per_layer_and_never_reads_test(minilm, tmp_path, monkeypatch):
    from glotpool.cli import main

    paths = write_splits(tmp_path)
    out = tmp_path / "layers"
    args = ["layers", "--backbone", "minilm", "--train", str(paths["train"]), "--dev", str(paths["dev"]),
            "--test", str(paths["test"]), "--out", str(out), "--graph-sample", "16", "--quiet"]
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    points = result["points"]
    assert [p["layer"] for p in points] == list(range(minilm.num_layers + 1))  # embeddings + 6 layers
    best = max(points, key=lambda p: (p["dev"], p["layer"]))
    assert result["best_layer"] == best["layer"] and result["best_dev"] == best["dev"]
    assert all(0 <= p["density"] <= 1 and p["edges_per_token"] >= 1 for p in points)  # self-loops count
    assert result["sizes"] == {"train": 60, "dev": 40}
    meta = json.loads((out / "features.json").read_text())
    assert meta["n"] == 100  # train + dev texts only: the test sentences never ran through the backbone
    assert f"**Best dev layer: {best['layer']}**" in (out / "results.md").read_text()
    assert (out / "layers.png").stat().st_size > 5000

    def boom(*a, **k):
        raise AssertionError("re-encoded the texts of a finished pass")

    monkeypatch.setattr("glotpool.states.backbone.iter_encoded", boom)
    assert main(args) == 0  # a rerun with the same inputs reuses the stored features and the probes' results
    again = json.loads((out / "results.json").read_text())
    assert again["points"] == points and again["total_seconds"] == result["total_seconds"]
    # other dev targets: the same features, but the probes are refitted
    flipped = tmp_path / "dev-flipped.csv"
    with open(paths["dev"], encoding="utf-8") as f, open(flipped, "w", newline="", encoding="utf-8") as g:
        rows = list(csv.DictReader(f))
        w = csv.DictWriter(g, list(rows[0]))
        w.writeheader()
        w.writerows({**r, "label": {"positive": "negative", "negative": "positive"}[r["label"]]} for r in rows)
    assert main([*args[:6], str(flipped), *args[7:]]) == 0
    refit = json.loads((out / "results.json").read_text())
    assert refit["probe_key"] != result["probe_key"]
    assert [p["dev"] for p in refit["points"]] != [p["dev"] for p in points]
