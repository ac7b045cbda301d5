"""The NLI embedding recipe (#21): nli-pairs triplets, hard-negative InfoNCE, premise-separated batches, retrieval
data without labels, the zero-shot suite, and the embed-train / evaluate commands end to end on fixture data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glotpool.data import TaskSource, TextDataset, read_table
from glotpool.data.fetch import build_nli_pairs, nli_triplets, split_nli_dev
from glotpool.training.heads import build_head
from glotpool.training.trainer import group_separated_batches

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Fixture corpora laid out like `glotpool fetch-data` output, nli-pairs built from the fixture SNLI."""
    root = tmp_path_factory.mktemp("gp-data")
    for name in ("snli", "pang-lee"):
        shutil.copytree(DATA / name, root / name)
    build_nli_pairs(root / "snli", root / "nli-pairs", check=False)
    return root


# ----------------------------------------------------------------------------------------------- data


def test_nli_triplets_pair_entailment_with_contradiction_of_same_premise():
    rows = [{"premise": "p1", "hypothesis": h, "label": y} for h, y in
            [("e1", "entailment"), ("c1", "contradiction"), ("n1", "neutral"), ("e2", "entailment"),
             ("e1", "entailment")]]  # duplicate entailment
    rows += [{"premise": "p2", "hypothesis": "e3", "label": "entailment"}]  # no contradiction: skipped
    rows += [{"premise": "p3", "hypothesis": "p3", "label": "entailment"},
             {"premise": "p3", "hypothesis": "c3", "label": "contradiction"}]  # positive == premise: dropped
    assert nli_triplets(rows) == [{"premise": "p1", "positive": "e1", "negative": "c1"},
                                  {"premise": "p1", "positive": "e2", "negative": "c1"}]


def test_nli_pairs_files_and_preset(data_dir):
    triplets = nli_triplets([json.loads(x) for x in open(DATA / "snli" / "train.jsonl")])
    tr, dv = split_nli_dev(triplets)
    assert {t["premise"] for t in tr}.isdisjoint({t["premise"] for t in dv}) and dv
    assert len({(t["premise"], t["positive"]) for t in triplets}) == len(triplets)  # deduplicated
    splits = TaskSource(task="nli-pairs", data_dir=str(data_dir)).load().splits
    assert [len(splits[k]) for k in ("train", "dev")] == [len(tr), len(dv)]
    ds = splits["train"]
    assert ds.texts3 is not None and ds.labels is None and ds.groups == ds.texts
    assert all(a != b for a, b in zip(ds.texts2, ds.texts3))
    sub = ds.subset([2, 0])
    assert sub.texts3 == [ds.texts3[2], ds.texts3[0]]
    with pytest.raises(ValueError, match="texts3 has 1 items"):
        TextDataset(["a", "b"], ["c", "d"], texts3=["x"])


def test_retrieval_files_need_no_label_column(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("premise,hypothesis,neg\n" + "".join(f"q{i},d{i},n{i}\n" for i in range(40)))
    task = TaskSource(task=None, data_file=str(f), task_type="retrieval", text_col="premise",
                      text_col_2="hypothesis").load()
    assert task.splits["train"].labels is None and task.splits["train"].texts3 is None
    task = TaskSource(task=None, data_file=str(f), task_type="retrieval", text_col="premise",
                      text_col_2="hypothesis", text_col_3="neg").load()
    assert task.splits["train"].texts3[0].startswith("n")
    with pytest.raises(ValueError, match="text-col-3"):
        TaskSource(task=None, data_file=str(f), task_type="pair", text_col="premise", text_col_2="hypothesis",
                   text_col_3="neg").load()
    assert read_table(f, text_col="premise", text_col_3="neg").texts3[1] == "n1"


# ----------------------------------------------------------------------------------------------- training pieces


def test_group_separated_batches_never_mix_a_group():
    rng = np.random.default_rng(0)
    groups = np.asarray([i // 3 for i in range(90)] + [100] * 5)  # triples + one big group
    batches = group_separated_batches(groups, 16, rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(groups)))  # every row exactly once
    for b in batches:
        assert len(set(groups[b].tolist())) == len(b)
    assert sum(len(b) == 16 for b in batches) >= 4


def test_hard_negative_infonce_and_learnable_temperature():
    torch.manual_seed(0)
    q, d, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    head = build_head("retrieval", 8, temperature=0.1)
    out = head(q, d, n)
    assert out.shape == (4, 8)
    assert torch.allclose(out[:, :4], head(q, d))  # the in-batch block is unchanged
    # the hard negative is a candidate for its query: a negative equal to the query raises the loss
    assert head.loss(head(q, d, q.clone())) > head.loss(head(q, d, -q))
    learned = build_head("retrieval", 8, temperature=0.1, learn_temperature=True)
    assert [n for n, _ in learned.named_parameters()] == ["log_scale"]
    loss = learned.loss(learned(q, d, n))
    loss.backward()
    assert learned.log_scale.grad is not None and torch.isclose(learned.scale, torch.tensor(10.0))


def test_train_with_hard_negatives_on_cache(minilm, data_dir, tmp_path):
    from glotpool.experiments.runs import PoolerSpec, run_one
    from glotpool.experiments.scaffold import prepare_experiment
    from glotpool.training.trainer import TrainConfig

    task = TaskSource(task="nli-pairs", data_dir=str(data_dir)).load()
    task.splits.pop("test")
    exp = prepare_experiment(minilm, task, tmp_path / "cache", show_progress=False)
    tr = exp.data["train"]
    assert tr.idx3 is not None and tr.groups is not None and exp.data["dev"].idx3 is not None
    cfg = TrainConfig(epochs=2, batch_size=16, show_progress=False)
    rec = run_one(PoolerSpec.parse("mean_linear"), exp.cache, exp.data, cfg, seed=0,
                  head_options={"learn_temperature": True})
    assert 0.0 < rec.dev["mrr@10"] <= 1.0 and rec.trainable_parameters == 384 * 385 + 1


# ----------------------------------------------------------------------------------------------- evaluation


def test_zeroshot_metrics_on_toy_vectors():
    from glotpool.experiments import zeroshot as zs

    q = np.eye(3)
    d = np.eye(3)[[1, 0, 2]]
    m = zs.retrieval_scores(q, d, [{1}, {0}, {2}])
    assert m == {"retrieval_mrr@10": 1.0, "retrieval_recall@1": 1.0, "retrieval_recall@10": 1.0}
    z1 = np.asarray([[1.0, 0.0]] * 3)
    z2 = np.asarray([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert zs.graded_spearman(z1, z2, [2, 1, 0]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 0.1, (20, 4)) + 3, rng.normal(0, 0.1, (20, 4)) - 3])
    y = ["a"] * 20 + ["b"] * 20
    assert zs.probe_scores(z[::2], y[::2], z[1::2], y[1::2]) == {"probe_logreg_acc": 1.0, "probe_knn10_acc": 1.0}
    assert zs.cluster_v_measure(z, y, n_runs=2) == pytest.approx(1.0)
    assert zs.prompted(["hi"], zs.PROMPTEOL) == ['This sentence : "hi" means in one word:"']


def test_reciprocal_ranks_agree_with_the_retrieval_metric():
    from glotpool.experiments import zeroshot as zs

    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(40, 8)), rng.normal(size=(120, 8))
    relevant = [set(rng.choice(120, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(40)]
    q[:15] = d[[min(r) for r in relevant[:15]]] + 0.1 * q[:15]  # some queries find their document first
    details: dict = {}
    mrr = zs.retrieval_scores(q, d, relevant, details)["retrieval_mrr@10"]
    rr = details["retrieval_rr@10"]
    assert rr.shape == (40,) and rr.mean() == pytest.approx(mrr)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    rank = [1 + int((cos[i] > max(cos[i, j] for j in rel)).sum()) for i, rel in enumerate(relevant)]  # no ties
    np.testing.assert_allclose(rr, [1 / r if r <= 10 else 0.0 for r in rank])  # an independent count
    assert (rr == 0).any() and (rr == 1).any()  # both ends occur: the check is not vacuous
    # hand-built ranks: the relevant document at rank 1, 3 and 11 (beyond @10)
    q = np.eye(3)[[0]].repeat(3, 0)
    d = np.stack([np.eye(3)[0] * (1 - 0.01 * i) + np.eye(3)[1] * 0.01 * i for i in range(12)])
    details = {}
    zs.retrieval_scores(q, d, [{0}, {2}, {10}], details)
    assert details["retrieval_rr@10"].tolist() == [1.0, pytest.approx(1 / 3), 0.0]


def test_seed_rows_and_paired_tests():
    from glotpool.experiments import zeroshot as zs

    rng = np.random.default_rng(1)
    good = [rng.uniform(0.5, 1.0, 300) for _ in range(3)]
    base = rng.uniform(0.0, 0.5, 300)
    results = [{"system": f"bb-glot-s{i}", "kind": "trained", "scores": {"retrieval_mrr@10": float(g.mean())},
                "details": {"retrieval_rr@10": g}} for i, g in enumerate(good)]
    results.append({"system": "bb mean (untrained)", "kind": "baseline", "scores": {"retrieval_mrr@10": base.mean()},
                    "details": {"retrieval_rr@10": base}})
    groups = zs.group_seeds(results)
    assert [g["system"] for g in groups] == ["bb-glot", "bb mean (untrained)"]
    assert groups[0]["runs"] == ["bb-glot-s0", "bb-glot-s1", "bb-glot-s2"] and len(groups[0]["scores"]["retrieval_mrr@10"]) == 3
    (t,) = zs.paired_tests(groups, n_resamples=2000)
    assert t["delta"] == pytest.approx(np.mean(good) - base.mean()) and t["p_value"] < 1e-3 and t["low"] > 0
    same = zs.paired_tests(zs.group_seeds([{**results[0], "system": "x", "kind": "trained"},
                                           {**results[0], "system": "y", "kind": "baseline"}]), n_resamples=2000)
    assert same[0]["delta"] == 0 and same[0]["p_value"] == 1.0
    assert "+" in zs.format_tests([t]) and "< 0.001" in zs.format_tests([t])
    assert "± " in zs.format_table(groups, ["retrieval_mrr@10"])


def test_cache_embedder_reads_the_encoders_states(minilm, tmp_path):
    """An encoder trained on a layer / the text's tokens is scored on those states, as Encoder.encode gives them."""
    from glotpool.encoder import Encoder
    from glotpool.experiments import zeroshot as zs
    from glotpool.pooling import build_pooler
    from glotpool.states.backbone import load_backbone
    from glotpool.states.cache import build_cache

    texts = ["a gentle , funny film .", "the plot never comes together , sadly ."]
    bb = load_backbone("minilm", layers=(-1, -3), prompt="Represent: {text}")
    torch.manual_seed(0)
    pooler = build_pooler("mean", in_dim=384)
    enc = Encoder(bb, pooler, layers=-3, tokens="text")
    cache = build_cache(bb, texts, tmp_path / "c", show_progress=False)
    got = zs.cache_embedder(cache, enc.pooler, layers=enc.layers, tokens=enc.tokens)(texts)
    want = enc.encode(texts)
    np.testing.assert_allclose(got, want, atol=2e-2)  # cache stored fp16
    plain = zs.cache_embedder(cache, enc.pooler, layers=-1)(texts)
    assert np.abs(plain - want).max() > 0.05  # another layer / all tokens really differ: the check can fail


def test_zeroshot_suite_and_mteb_on_cached_states(minilm, data_dir, tmp_path):
    from glotpool.experiments import zeroshot as zs
    from glotpool.integrations.mteb import local_mteb_scores
    from glotpool.pooling import build_pooler
    from glotpool.states.cache import build_cache

    data = zs.load_zeroshot_data(data_dir, n_retrieval=10, n_graded=20, n_probe=40)
    assert data.sizes["retrieval_queries"] == 10 and data.sizes["probe_test"] == 20
    assert all(data.relevant) and set(data.pairs.labels) <= {0.0, 1.0, 2.0}
    cache = build_cache(minilm, data.texts(), tmp_path / "c", show_progress=False)
    embed = zs.cache_embedder(cache, build_pooler("mean", in_dim=384))
    ref = minilm.encode(data.queries[:2])
    assert np.allclose(embed(data.queries[:2]), build_pooler("mean", in_dim=384)(*ref).numpy(), atol=2e-2)
    scores = zs.evaluate_embedder(embed, data)
    assert set(scores) == set(zs.METRICS) and scores["retrieval_mrr@10"] > 0.3
    mteb = local_mteb_scores(embed, 384, data.probe_train, data.probe_test, data.pairs, 0.0, 2.0)
    assert mteb["mteb_sts_spearman"] == pytest.approx(scores["graded_spearman"], abs=1e-3)
    assert 0.0 <= mteb["mteb_classification_acc"] <= 1.0


def test_embed_train_then_evaluate_commands(data_dir, tmp_path):
    env = {**os.environ, "GLOTPOOL_DATA": str(data_dir)}
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "glotpool", "embed-train", "--backbone", "minilm", "--pooler", "mean_linear",
           "--out", str(out), "--epochs", "1", "--batch-size", "16", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "time: caching" in res.stdout
    for f in ("model/encoder.json", "model/README.md", "st/modules.json", "st/README.md", "recipe.json"):
        assert (out / f).is_file(), f
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["hard_negatives"] and recipe["sizes"]["train"] > 0 and recipe["total_seconds"] > 0
    cmd = [sys.executable, "-m", "glotpool", "evaluate", "--model", str(out), "--baselines", "mean", "--no-mteb",
           "--n-retrieval", "10", "--n-graded", "20", "--n-probe", "40", "--out", str(tmp_path / "ev"), "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    table = res.stdout
    assert "| m |" in table and "mean (untrained)" in table and "SNLI MRR@10" in table
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [r["kind"] for r in saved["results"]] == ["trained", "baseline"]
    # --grid: every point trained with the seed on the same cache, the dev-best point exported
    grid_out = tmp_path / "g"
    cmd = [sys.executable, "-m", "glotpool", "embed-train", "--backbone", "minilm", "--pooler", "mean_linear",
           "--out", str(grid_out), "--cache-dir", str(out / "cache"), "--grid", "lr=1e-4,1e-2", "--epochs", "1",
           "--batch-size", "16", "--no-st", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    recipe = json.loads((grid_out / "recipe.json").read_text())
    dev = recipe["dev_grid"]
    assert set(dev) == {"lr-0.0001", "lr-0.01"} and len(set(dev.values())) == 2  # the points really differ
    best = max(dev, key=dev.get)
    assert recipe["chosen"] == {"lr": float(best.split("-", 1)[1])} and recipe["lr"] == recipe["chosen"]["lr"]
    assert recipe["dev"]["mrr@10"] == pytest.approx(dev[best])
    assert Path(recipe["run_dir"]) == grid_out / "runs" / best / "seed-0"
    assert "dev grid (MRR@10)" in res.stdout and f"chosen {best}" in res.stdout
    from safetensors.torch import load_file
    exported = {p.name: load_file(p) for p in (grid_out / "model").rglob("*.safetensors")}
    trained = {p.name: load_file(p) for p in (Path(recipe["run_dir"]) / "best" / "pooler").rglob("*.safetensors")}
    assert exported.keys() >= trained.keys() and trained
    for name, tensors in trained.items():  # the exported model is the chosen point's, not the last one trained
        for k, v in tensors.items():
            assert torch.equal(exported[name][k], v), k
    # a decoder-style recipe: prompt + text-only tokens; the exported encoder keeps both, so encode == training
    prompt_out = tmp_path / "p"
    cmd = [sys.executable, "-m", "glotpool", "embed-train", "--backbone", "minilm", "--pooler", "mean",
           "--prompt", "Represent the sentence: {text}", "--tokens", "text", "--out", str(prompt_out), "--epochs", "1",
           "--batch-size", "16", "--no-st", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    recipe = json.loads((prompt_out / "recipe.json").read_text())
    assert recipe["prompt"] == "Represent the sentence: {text}" and recipe["states"]["tokens"] == "text"
    card = json.loads((prompt_out / "model" / "encoder.json").read_text())
    assert card["states"]["tokens"] == "text" and "Represent the sentence" in json.dumps(card)
