"""The comparison protocol: learning-rate schedules, dev-size rule, paired significance tests, the linear probe."""
import math
from pathlib import Path

import numpy as np
import pytest

from glotpool.data.splits import dev_fraction_for
from glotpool.experiments.significance import mcnemar, paired_bootstrap, per_row
from glotpool.training.trainer import TrainConfig, _is_better, lr_factor

DATA = Path(__file__).parent / "data"


def test_lr_schedules_warm_up_then_decay_to_zero():
    total = 100
    cos = [lr_factor(s, total, "cosine", 0.1) for s in range(total)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(cos[9:], cos[10:]))  # then monotone decay
    assert cos[10 + 45] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    lin = [lr_factor(s, total, "linear", 0.0) for s in range(total)]
    assert lin[0] == 1.0 and lin[50] == pytest.approx(0.5) and lin[-1] == pytest.approx(0.01)
    assert {lr_factor(s, total, "constant", 0.3) for s in range(total)} == {1.0}
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="step")


def test_dev_loss_breaks_ties_of_the_dev_metric():
    assert _is_better(0.8, 0.8, True, loss=0.4, best_loss=0.5)
    assert not _is_better(0.8, 0.8, True, loss=0.6, best_loss=0.5)
    assert _is_better(0.81, 0.8, True, loss=9.0, best_loss=0.5)  # the metric decides first
    assert not _is_better(float("nan"), 0.8, True)


def test_dev_split_has_at_least_200_rows_and_warns_when_data_is_small(capsys):
    assert dev_fraction_for(10_000) == 0.1
    assert dev_fraction_for(1000) == pytest.approx(0.2)  # 200 rows, not 100
    assert dev_fraction_for(300) == 0.5 and "too small to select on" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pass --dev"):
        dev_fraction_for(1)


def test_mcnemar_matches_the_exact_binomial_by_hand():
    gold = np.zeros(40, dtype=int)
    a = gold.copy()
    b = gold.copy()
    a[:2] = 1  # a wrong on 2 rows that b gets right ...
    b[2:12] = 1  # ... b wrong on 10 rows that a gets right
    t = mcnemar(a, b, gold)
    assert t.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2 P(Bin(12, 1/2) <= 2)
    assert t.delta == pytest.approx((38 - 30) / 40)


def test_paired_bootstrap_interval_covers_the_true_difference_and_p_tracks_it():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400)
    same = per_row([gold.copy()], gold, "accuracy")
    t0 = paired_bootstrap(same, same, gold)
    assert t0.delta == 0.0 and t0.p_value == 1.0
    better = [np.where(rng.random(400) < 0.9, gold, 1 - gold) for _ in range(3)]  # ~90 % right
    worse = [np.where(rng.random(400) < 0.6, gold, 1 - gold) for _ in range(3)]  # ~60 % right
    t = paired_bootstrap(per_row(better, gold, "accuracy"), per_row(worse, gold, "accuracy"), gold)
    assert t.low < t.delta < t.high and 0.2 < t.delta < 0.4 and t.p_value < 0.001
    assert per_row(better, gold, "accuracy").mean() == pytest.approx(np.mean([(p == gold).mean() for p in better]))
    scores = rng.random(200)
    tc = paired_bootstrap(scores + rng.normal(0, 0.1, 200), scores + rng.normal(0, 1.0, 200), scores, "spearman",
                          n_resamples=500)
    assert tc.delta > 0 and tc.p_value < 0.01


@pytest.mark.slow
def test_linear_head_reaches_the_dev_tuned_sklearn_probe_on_real_sentences(minilm, tmp_path):
    """Parity: mean pooling + glotpool's linear head under the converged budget vs LogisticRegression (C tuned on
    dev) on the same mean vectors, same splits (600 Pang & Lee sentences: train 340 / dev 200 / test 60)."""
    from glotpool.data import TaskSource
    from glotpool.experiments.compare import CompareSettings, run_compare

    settings = CompareSettings(source=TaskSource(task=None, data_file=str(DATA / "pang-lee" / "sentences-600.csv")),
                               poolers=("mean",), seeds=(0,), probe="sklearn", grid={"lr": (1e-3, 1e-2)},
                               show_progress=False)
    result = run_compare(settings, tmp_path / "cmp", backbone=minilm)
    rows = {r["label"]: r for r in result["summary"]}
    head, probe = rows["mean"]["mean"], rows["mean + sklearn LR"]["mean"]
    assert probe > 0.6  # the probe itself learned something
    assert head >= probe - 2 / 60, (head, probe)  # within two of the 60 test sentences
    dev = rows["mean"]["dev_grid"]  # {1e-3, 1e-2}, widened past whichever edge dev chose
    assert set(dev) >= {"lr-0.001", "lr-0.01"} and dev[f"lr-{rows['mean']['chosen']['lr']:g}"] == max(dev.values())
    assert "C" in rows["mean + sklearn LR"]["chosen"]
    sig = result["significance"]
    assert sig["best"] in rows and set(sig["tests"]) == set(rows) - {sig["best"]}
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "Δ vs best" in table and "mean + sklearn LR" in table


def test_a_dev_grid_belongs_to_the_converged_budget():
    from glotpool.experiments.budgets import CONVERGED_GRID, protocol

    base, grid, metric = protocol("converged", TrainConfig(batch_size=16), {"lr": (1e-3,)}, "single")
    assert grid == {"lr": (1e-3,)} and base.batch_size == 16 and base.schedule == "cosine" and metric == "accuracy"
    assert protocol("converged", TrainConfig(), None, "sts")[1:] == (dict(CONVERGED_GRID), "spearman")
    assert protocol("fixed", TrainConfig(lr=0.5), None, "single")[0].lr == 0.5
    with pytest.raises(ValueError, match="converged budget only"):
        protocol("paper", TrainConfig(), {"lr": (1e-3,)}, "single")


def test_reports_name_the_protocol_from_its_config():
    from dataclasses import asdict, replace

    from glotpool.experiments.budgets import CONVERGED, CONVERGED_GRID, describe

    text = describe("converged", asdict(CONVERGED), CONVERGED_GRID)
    assert "up to 60 epochs, cosine decay" in text and "warm-up" not in text and "patience 8" in text
    assert "lr ∈ {0.0003, 0.001, 0.003, 0.01}, weight_decay ∈ {0, 0.01} chosen on dev" in text
    warm = describe("converged", asdict(replace(CONVERGED, warmup=0.05)), {"lr": (1e-3,)}, per="point")
    assert "5% warm-up + cosine decay" in warm and "at lr 0.001 (a one-point grid: no selection)" in warm
    assert describe("fixed", asdict(replace(CONVERGED, lr=0.02, epochs=7)), {}).startswith(
        "budget `fixed`: lr 0.02, up to 7 epochs")


def test_a_plateaued_dev_metric_stops_but_keeps_the_lowest_loss_tie():
    """Patience counts epochs without a better dev metric; among tied epochs the lowest dev loss is kept."""
    import torch

    from glotpool.training.trainer import CachedSplit, CachedSplits, PoolerWithHead, fit

    class Cache:  # fit only reads the train lengths
        lengths = np.full(8, 3)

    data = CachedSplits("single", {"train": CachedSplit(np.arange(8), None, np.zeros(8, dtype=np.int64)),
                                   "dev": CachedSplit(np.arange(8), None, np.zeros(8, dtype=np.int64))}, ["a", "b"])
    model = PoolerWithHead(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    devs = iter([{"accuracy": 0.5, "loss": 1.0}, {"accuracy": 0.9, "loss": 0.8}] +
                [{"accuracy": 0.9, "loss": 0.7 - 0.1 * i} for i in range(5)] + [{"accuracy": 0.9, "loss": 0.0}] * 50)
    model.pooler.name = "toy"
    cfg = TrainConfig(epochs=50, patience=3, show_progress=False)
    best_epoch, history, _ = fit(model, Cache(), data, cfg, "accuracy", True,
                                 lambda rows: model.head.weight.sum() * 0.0 + model.pooler.weight.sum() * 0.0,
                                 lambda: next(devs), show_progress=False)
    assert len(history) == 5  # best metric at epoch 2, then 3 tied epochs: stop
    assert best_epoch == 5  # the last tie had the lowest dev loss


def test_a_parameter_free_pooler_is_pooled_once_per_row_with_the_same_result(minilm, tmp_path, monkeypatch):
    """The memo of a parameter-free pooler's vectors: each cache row is pooled once (not once per epoch), and the
    trained head is the one training without the memo gives (an independent run that pools every batch)."""
    import torch

    from glotpool.data import TaskSource
    from glotpool.experiments.scaffold import prepare_experiment
    from glotpool.pooling import build_pooler
    from glotpool.training import trainer
    from glotpool.training.heads import build_head

    task = TaskSource(task=None, data_file=str(DATA / "pang-lee" / "sentences-600.csv")).load()
    exp = prepare_experiment(minilm, task, tmp_path / "cache", show_progress=False)
    cfg = TrainConfig(epochs=4, lr=1e-2, patience=0, show_progress=False)

    def train(memo_limit):
        monkeypatch.setattr(trainer, "MEMO_MAX_FLOATS", memo_limit)
        torch.manual_seed(0)
        pooler = build_pooler("mean", in_dim=exp.cache.dim)
        rows = []
        pooler.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
        head = build_head("single", pooler.out_dim, num_labels=exp.data.num_labels)
        result = trainer.train_pooler(pooler, head, exp.cache, exp.data, cfg)
        return result, head, sum(rows)

    memo, memo_head, memo_rows = train(trainer.MEMO_MAX_FLOATS)
    plain, plain_head, plain_rows = train(0)
    n_rows = sum(len(np.unique(exp.data[s].idx1)) for s in ("train", "dev", "test"))
    assert memo_rows <= n_rows < plain_rows / 3  # once per row vs once per row and epoch
    assert memo.dev == pytest.approx(plain.dev, abs=1e-6) and memo.test == pytest.approx(plain.test, abs=1e-6)
    for a, b in zip(memo_head.state_dict().values(), plain_head.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_probe_extends_its_c_grid_while_the_best_c_sits_on_the_edge():
    """A best C on the grid's edge makes the probe try the next decade out (budgets.beyond_edge, the lr grid's rule),
    until the best C is interior; the choice is the best dev score over every C tried (seeded noisy data whose dev
    optimum is C = 0.1)."""
    from glotpool.experiments.probe import fit_probe

    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 301))
        x[:, 0] += 1.5 * (2 * y - 1)
        return x, y

    x, y = zip(split(40), split(400))
    x, y = dict(zip(("train", "dev"), x)), dict(zip(("train", "dev"), y))
    wide = fit_probe(x, y, "single", 2, c_grid=(1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0))
    assert wide["C"] == 0.1  # this data's dev optimum, inside the wide grid: no extension
    assert sorted(map(float, wide["dev_by_C"])) == [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
    narrow = fit_probe(x, y, "single", 2, c_grid=(1e-3, 1e-2))  # 0.01 wins: add 0.1; 0.1 wins: add 1; 0.1 wins
    assert sorted(map(float, narrow["dev_by_C"])) == [1e-3, 1e-2, 0.1, 1.0] and narrow["C"] == 0.1
    assert narrow["dev"]["accuracy"] == max(narrow["dev_by_C"].values()) == wide["dev_by_C"]["0.1"]
    fixed = fit_probe(x, y, "single", 2, c_grid=(1.0,))  # a one-point grid selects nothing, as for the lr grid
    assert list(map(float, fixed["dev_by_C"])) == [1.0] and fixed["C"] == 1.0


def test_the_main_jobs_settings_are_valid_protocols():
    """Both sizes of the main job name a budget and grid that protocol() accepts (a fixed budget searches no grid)."""
    from glotpool.experiments.budgets import protocol
    from glotpool.experiments.pipeline import MainJobSettings

    for s in (MainJobSettings(), MainJobSettings.smoke()):
        protocol(s.compare_budget, TrainConfig(), s.compare_grid, "single")
        for budget in s.stress_budgets:
            protocol(budget, TrainConfig(), s.stress_grid if budget == "converged" else None, "single")
    with pytest.raises(ValueError, match="converged budget only"):
        s = MainJobSettings.smoke(compare_grid={"lr": (1e-3,)})
        protocol(s.compare_budget, TrainConfig(), s.compare_grid, "single")


def test_the_lr_grid_widens_past_its_edge_while_dev_picks_the_edge(monkeypatch, tmp_path):
    """A dev-best lr on the grid's edge is not shown to be tuned: tune_and_run adds the next step beyond it (the
    grid's ratio, on the 1-3-10 ladder), at most MAX_LR_EXTENSIONS times, and trains every seed at the final pick."""
    from types import SimpleNamespace

    from glotpool.experiments import budgets

    assert budgets.beyond_edge((3e-4, 1e-3, 3e-3, 1e-2), 3e-4) == 1e-4
    assert budgets.beyond_edge((3e-4, 1e-3, 3e-3, 1e-2), 1e-2) == 3e-2
    assert budgets.beyond_edge((1e-3, 1e-2), 1e-2) == 1e-1
    assert budgets.beyond_edge((1e-3, 1e-2), 5e-3) is None and budgets.beyond_edge((1e-3,), 1e-3) is None
    runs = []

    def fake_run(spec, cache, data, cfg, seed, head_options, run_dir, save_model):
        runs.append((cfg.lr, cfg.weight_decay, seed))
        acc = -abs(math.log10(cfg.lr) - math.log10(peak)) - cfg.weight_decay  # dev accuracy peaks at lr = peak
        return SimpleNamespace(dev={"accuracy": acc, "loss": -acc}, lr=cfg.lr)

    monkeypatch.setattr(budgets, "run_one", fake_run)
    data = SimpleNamespace(task_type="single")
    base = TrainConfig(show_progress=False)
    # peak 1e-4: 3e-4 wins, 1e-4 is tried and wins, 3e-5 is tried and loses; peak 1e-7: stops after two steps;
    # peak 2e-3 on {1e-3, 3e-3}: 3e-3 wins, 1e-2 is tried and loses
    for peak, want, tried in ((1e-4, 1e-4, {1e-3, 3e-4, 1e-4, 3e-5}), (1e-7, 3e-5, {1e-3, 3e-4, 1e-4, 3e-5}),
                              (2e-3, 3e-3, {1e-3, 3e-3, 1e-2})):
        runs.clear()
        grid = {"lr": (3e-4, 1e-3), "weight_decay": (0.0, 0.01)} if peak != 2e-3 else {"lr": (1e-3, 3e-3)}
        chosen, records, dev_table = budgets.tune_and_run(None, None, data, base, grid, (0, 1, 2), tmp_path)
        assert chosen["lr"] == want and [r.lr for r in records] == [want] * 3, peak
        assert chosen.get("weight_decay", 0.0) == 0.0  # the other axes are searched at the new lr too
        assert {lr for lr, _, _ in runs} == tried and len(dev_table) == sum(seed == 0 for _, _, seed in runs)
        assert len(runs) == len(set(runs))  # no point trained twice
        assert grid["lr"] in ((3e-4, 1e-3), (1e-3, 3e-3))  # the caller's grid is left as it was


def test_the_constant_prediction_loss_is_the_best_constant_cross_entropy():
    """constant_prediction_loss = H(m), m_c ∝ w_c n_c: equal to torch's weighted cross-entropy of the constant
    prediction p = m, and no other constant prediction does better."""
    import torch
    import torch.nn.functional as F

    from glotpool.experiments.runs import constant_prediction_loss
    from glotpool.training.heads import build_head

    targets = np.array([0] * 50 + [1] * 30 + [2] * 20)
    rng = np.random.default_rng(0)
    for weights in (None, [0.5, 1.0, 3.0]):
        head = build_head("single", 8, num_labels=3, class_weights=weights)
        got = constant_prediction_loss(head, targets)
        w = torch.tensor(weights or [1.0] * 3, dtype=torch.float64)
        mass = torch.bincount(torch.from_numpy(targets), minlength=3).double() * w
        y = torch.from_numpy(targets)

        def ce(p):  # the weighted mean cross-entropy of predicting p for every row, as the trainer computes it
            return float(F.cross_entropy(torch.log(p).expand(len(y), -1), y, weight=w))

        assert got == pytest.approx(ce(mass / mass.sum()), rel=1e-9)
        for _ in range(20):
            assert ce(torch.from_numpy(rng.dirichlet(np.ones(3)))) >= got - 1e-12
    assert constant_prediction_loss(build_head("sts", 8), np.array([0.5, 1.0])) is None


def test_a_run_that_learned_nothing_is_told_apart_on_a_real_model(minilm, tmp_path):
    """run_one records the train loss and the constant prediction's (ln 2 on balanced Pang & Lee): a head trained at
    lr 1e-2 learned something, one at lr 1e-9 (the initial, near-constant head) did not."""
    from glotpool.data import TaskSource
    from glotpool.experiments.runs import PoolerSpec, learned_anything, run_one
    from glotpool.experiments.scaffold import prepare_experiment

    task = TaskSource(task=None, data_file=str(DATA / "pang-lee" / "sentences-600.csv")).load()
    exp = prepare_experiment(minilm, task, tmp_path / "cache", show_progress=False)
    counts = np.bincount(exp.data["train"].targets)
    entropy = -sum(c / counts.sum() * math.log(c / counts.sum()) for c in counts)
    for lr, want in ((1e-2, True), (1e-9, False)):
        rec = run_one(PoolerSpec.parse("mean"), exp.cache, exp.data,
                      TrainConfig(epochs=3, lr=lr, patience=0, show_progress=False), seed=0)
        assert rec.extra["train_loss"]["constant"] == pytest.approx(entropy, rel=1e-9)
        assert learned_anything(rec) is want, lr


def test_a_first_seed_that_learned_nothing_is_retried_once_with_the_next_seed(monkeypatch, tmp_path):
    """A grid point whose seed-0 run collapsed is scored by its seed-1 run (the run seed 1 then reuses): one
    collapsed seed neither rules out the best lr nor sends the widening the wrong way; the row keeps every seed."""
    from types import SimpleNamespace

    from glotpool.experiments import budgets

    runs = []
    dev_at = {1e-3: 0.60, 1e-2: 0.40, 1e-4: 0.55}  # what a run that trains reaches on dev

    def fake_run(spec, cache, data, cfg, seed, head_options, run_dir, save_model):
        runs.append((cfg.lr, seed))
        collapsed = cfg.lr in (1e-3, 1e-2) and seed == 0  # seed 0 collapses at both grid points
        acc = 0.39 if collapsed else dev_at[cfg.lr]
        return SimpleNamespace(dev={"accuracy": acc, "loss": 1.0 - acc}, lr=cfg.lr, seed=seed,
                               extra={"train_loss": {"min": 1.0985 if collapsed else 0.8, "constant": 1.0986}})

    monkeypatch.setattr(budgets, "run_one", fake_run)
    spec = SimpleNamespace(label="glot")
    chosen, records, dev_table = budgets.tune_and_run(spec, None, SimpleNamespace(task_type="single"),
                                                      TrainConfig(show_progress=False), {"lr": (1e-3, 1e-2)},
                                                      (0, 1, 2), tmp_path)
    # without the retry, 1e-2 (0.39 vs 0.39, lower loss ties) or noise would have decided; with it 1e-3 wins,
    # sits on the lower edge, and 1e-4 (trained by seed 0, no retry) is tried and loses
    assert chosen == {"lr": 1e-3}
    assert dev_table == {"lr-0.001": 0.60, "lr-0.01": 0.40, "lr-0.0001": 0.55}
    assert [(r.lr, r.seed) for r in records] == [(1e-3, 0), (1e-3, 1), (1e-3, 2)]
    assert records[0].dev["accuracy"] == 0.39  # the collapsed seed stays in the row
    assert sorted(runs) == sorted([(1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1), (1e-4, 0), (1e-3, 1), (1e-3, 2)])
