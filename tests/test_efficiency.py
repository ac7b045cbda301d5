"""Efficiency benchmark: batching, reporting, LoRA targets, and the whole `bench-efficiency --tiny` run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glotpool.experiments.efficiency import BenchConfig, _batches, lora_targets, summarize, tiny_config

DATA = Path(__file__).parent / "data"


def test_batches_same_sequence_and_full_epochs():
    a, b = _batches(10, 4, 7, seed=3), _batches(10, 4, 7, seed=3)
    assert len(a) == 7 and all(len(x) == 4 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # every method sees the same batches
    first = np.concatenate(a)[:10]
    assert sorted(first.tolist()) == list(range(10))  # the first 10 draws are one full epoch


def test_config_validation():
    with pytest.raises(ValueError, match="unknown method"):
        BenchConfig(methods=("glot", "adapter"))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        BenchConfig(steps=0)
    assert tiny_config(backbone="smollm2").steps == 3


def test_lora_targets():
    class Attn(torch.nn.Module):
        def __init__(self, names):
            super().__init__()
            for n in names:
                setattr(self, n, torch.nn.Linear(2, 2))

    assert lora_targets(Attn(["query", "key", "value", "dense"])) == ["query", "key", "value"]
    assert lora_targets(Attn(["q_proj", "k_proj", "v_proj", "o_proj"])) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.raises(ValueError, match="attention projections"):
        lora_targets(Attn(["c_attn"]))


def test_summarize_ratios_and_table():
    cfg = BenchConfig(n_train=100, batch_size=10, epochs=5, lora_ranks=(64,))
    rec = dict(total_parameters=1, train_seconds=1.0, final_loss=0.1, base_memory_mb=300.0)
    results = {"glot_cache": {"cache_seconds": 5.0, "peak_memory_mb": 600.0},
               "glot_train": {**rec, "trainable_parameters": 1000, "seconds_per_step": 0.01, "test_accuracy": 0.7,
                              "peak_memory_mb": 350.0},
               "lora_r64": {**rec, "trainable_parameters": 50_000, "seconds_per_step": 2.0, "test_accuracy": 0.8,
                        "peak_memory_mb": 900.0},
               "full": {**rec, "trainable_parameters": 10**7, "seconds_per_step": 4.0, "test_accuracy": 0.8,
                        "peak_memory_mb": 1500.0}}
    rep = summarize(cfg, results, n_train=100, n_test=50)
    assert rep["steps_per_epoch"] == 10
    g = rep["rows"]["glot"]
    assert g["seconds_per_epoch"] == pytest.approx(0.1)
    assert g["seconds_per_epoch_amortised"] == pytest.approx(0.1 + 5.0 / 5)
    assert rep["ratios"]["lora_r64"]["speedup_per_epoch"] == pytest.approx(200.0)
    assert rep["ratios"]["lora_r64"]["fewer_trainable_parameters"] == pytest.approx(50.0)
    assert rep["targets"] == {"speedup_vs_lora_r64>=100x": True, "params_vs_lora_r64>=20x_fewer": True}
    table = rep["table"]
    assert "| GLOT (cached states) | 1,000 |" in table and "200.0x faster per epoch" in table


@pytest.mark.slow
def test_bench_tiny_end_to_end(tmp_path, glotpool_home):
    from glotpool.cli import bench_efficiency

    parser = argparse.ArgumentParser()
    bench_efficiency.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "bench"
    args = parser.parse_args(["bench-efficiency", "--tiny", "--data-dir", str(DATA), "--out", str(out)])
    assert args.func(args) == 0
    rep = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert (out / "efficiency.png").stat().st_size > 1000 and "| LoRA r=8 |" in md and "| LoRA r=64 |" in md
    rows = rep["rows"]
    assert set(rows) == {"glot", "lora_r8", "lora_r64", "full"}
    # exact parameter counts: MiniLM has 22,713,216 weights; LoRA on PEFT's BERT default (query, value) of 6
    # layers at r = 8 and r = 64; head 384x2+2
    head = 384 * 2 + 2
    assert rows["full"]["trainable_parameters"] == 22_713_216 + head
    for r in (8, 64):
        assert rows[f"lora_r{r}"]["trainable_parameters"] == 6 * 2 * r * (384 + 384) + head
        assert rows["glot"]["trainable_parameters"] < rows[f"lora_r{r}"]["trainable_parameters"]
        assert f"vs LoRA r={r}:" in md
    assert rep["config"]["lora_alpha"] is None and rep["config"]["lora_targets"] is None  # PEFT's defaults
    for r in rows.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["seconds_per_step"] > 0 and r["peak_memory_mb"] >= r["base_memory_mb"] > 0
    for key, r in rows.items():
        assert len(rep["workers"]["glot_train" if key == "glot" else key]["losses"]) == 3
    assert rows["glot"]["cache_seconds"] > 0
    assert rows["glot"]["seconds_per_epoch_amortised"] > rows["glot"]["seconds_per_epoch"]


def test_lora_flags_and_peft_defaults():
    from glotpool.cli import bench_efficiency
    from glotpool.experiments.efficiency import lora_target_modules

    parser = argparse.ArgumentParser()
    bench_efficiency.register(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["bench-efficiency", "--lora-r", "4,16", "--lora-alpha", "32", "--lora-targets",
                           "query,key"])
    assert (a.lora_r, a.lora_alpha, a.lora_targets) == ((4, 16), 32, ("query", "key"))
    d = parser.parse_args(["bench-efficiency"])
    assert d.lora_r is None and d.lora_alpha is None and d.lora_targets is None
    assert BenchConfig().lora_ranks == (8, 64) and BenchConfig().lora_alpha is None
    with pytest.raises(ValueError):
        BenchConfig(lora_ranks=())

    class Cfg:
        model_type = "bert"

    class Bert(torch.nn.Module):
        config = Cfg()

    assert lora_target_modules(Bert()) is None  # PEFT's own default for BERT
    assert lora_target_modules(Bert(), ("query",)) == ["query"]
