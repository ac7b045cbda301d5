"""Zero-shot evaluation of sentence embeddings on data no model trained on (``glotpool evaluate``).

    data = load_zeroshot_data("data", n_retrieval=1000, n_graded=2000, n_probe=2000)
    embed = cache_embedder(cache, pooler)                 # texts -> [N, dim] from cached token states
    scores = evaluate_embedder(embed, data)               # {"retrieval_mrr@10": ..., "graded_spearman": ..., ...}

==========================  =====================================================================================
``retrieval_*``             SNLI test: each premise (with an entailed hypothesis) retrieves its entailed
                            hypothesis among all hypotheses of the sampled premises (cosine): MRR@10, recall@1/10
``graded_spearman``         SNLI test pairs of those premises, graded entailment 2 > neutral 1 > contradiction 0:
                            Spearman of cosine vs grade
``probe_logreg_acc``        Pang & Lee: logistic regression (max_iter 100) on frozen vectors, 50/50 split
``probe_knn10_acc``         the same split, 10-nearest-neighbour vote (cosine)
``cluster_v_measure``       Pang & Lee: mini-batch k-means (k = 2, batch 500) V-measure, mean of 10 seeds
                            (MTEB's clustering protocol)
==========================  =====================================================================================

Every metric is in [0, 1] (Spearman in [-1, 1]); higher is better. Subsets are seeded; their sizes travel with the
scores (``data.sizes``). ``PROMPTEOL`` is the PromptEOL template (Jiang et al. 2023) for decoder baselines.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from glotpool.data import TextDataset, read_table
from glotpool.data.fetch import default_data_dir
from glotpool.data.splits import split_dataset, subsample
from glotpool.states.cache import TokenCache, unique_texts
from glotpool.training.metrics import compute_metrics, reciprocal_ranks_at_k

PROMPTEOL = 'This sentence : "{text}" means in one word:"'
GRADES = {"entailment": 2.0, "neutral": 1.0, "contradiction": 0.0}
PER_EXAMPLE = {"retrieval_mrr@10": "retrieval_rr@10", "probe_logreg_acc": "probe_logreg_correct",
               "probe_knn10_acc": "probe_knn10_correct"}  # metric -> the per-example values whose mean it is
METRICS = ("retrieval_mrr@10", "retrieval_recall@1", "retrieval_recall@10", "graded_spearman", "probe_logreg_acc",
           "probe_knn10_acc", "cluster_v_measure")

Embedder = Callable[[Sequence[str]], np.ndarray]


@dataclass
class ZeroShotData:
    """The evaluation texts: SNLI-test retrieval + graded pairs, Pang & Lee probe + clustering."""

    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]  # per query: indices into corpus
    pairs: TextDataset  # texts, texts2, labels = grades (2/1/0)
    probe_train: TextDataset
    probe_test: TextDataset
    cluster: TextDataset  # texts + labels
    sizes: dict = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Every text to embed, unique, first-seen order."""
        return unique_texts(self.queries, self.corpus, self.pairs.texts, self.pairs.texts2, self.probe_train.texts,
                            self.probe_test.texts, self.cluster.texts)


def load_zeroshot_data(data_dir: str | os.PathLike | None = None, *, n_retrieval: int = 1000, n_graded: int = 2000,
                       n_probe: int = 2000, seed: int = 0, snli_test: str | os.PathLike | None = None,
                       pang_lee: str | os.PathLike | None = None) -> ZeroShotData:
    """Seeded subsets of ``DATA_DIR/snli/test.jsonl`` and ``DATA_DIR/pang-lee/sentences.csv`` (or the given
    files): ``n_retrieval`` premises (all of their hypotheses form the corpus), ``n_graded`` of their pairs
    (label-stratified), ``n_probe`` Pang & Lee sentences (stratified; split 50/50 for the probe)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    snli_test = Path(snli_test) if snli_test is not None else root / "snli" / "test.jsonl"
    pang_lee = Path(pang_lee) if pang_lee is not None else root / "pang-lee" / "sentences.csv"
    for f in (snli_test, pang_lee):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing; run `glotpool fetch-data --data-dir {root}` (or set GLOTPOOL_DATA)")
    snli = read_table(snli_test, text_col="premise", text_col_2="hypothesis", label_col="label")
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, p in enumerate(snli.texts):
        by.setdefault(p, []).append(i)
    with_pos = [p for p, rows in by.items() if any(snli.labels[i] == "entailment" for i in rows)]
    chosen = [with_pos[i] for i in np.sort(rng.permutation(len(with_pos))[:n_retrieval])]
    rows = [i for p in chosen for i in by[p]]
    corpus = unique_texts([snli.texts2[i] for i in rows])
    where = {t: j for j, t in enumerate(corpus)}
    relevant = [{where[snli.texts2[i]] for i in by[p] if snli.labels[i] == "entailment"} for p in chosen]
    pair_rows = [i for i in rows if snli.labels[i] in GRADES]
    pairs = snli.subset(pair_rows)
    pairs = subsample(pairs, n_graded, seed=seed) if n_graded < len(pairs) else pairs
    pairs = TextDataset(pairs.texts, pairs.texts2, [GRADES[y] for y in pairs.labels])
    pl = read_table(pang_lee, text_col="text", label_col="label")
    pl = subsample(pl, n_probe, seed=seed) if n_probe < len(pl) else pl
    tr, _, te = split_dataset(pl, (0.5, 0.0, 0.5), seed=seed)
    sizes = {"retrieval_queries": len(chosen), "retrieval_corpus": len(corpus), "graded_pairs": len(pairs),
             "probe_train": len(tr), "probe_test": len(te), "cluster_texts": len(pl), "seed": seed}
    return ZeroShotData(chosen, corpus, relevant, pairs, tr, te, pl, sizes)


# ----------------------------------------------------------------------------------------------- metrics


def _unit(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def retrieval_scores(q: np.ndarray, d: np.ndarray, relevant: list[set[int]],
                     details: dict | None = None) -> dict[str, float]:
    """MRR@10, recall@1 / @10 by cosine. ``details``: filled with the per-query reciprocal ranks
    (``retrieval_rr@10``, whose mean is the MRR@10 returned) from the same similarity matrix."""
    sims = _unit(q) @ _unit(d).T  # [Q, N]
    m = compute_metrics("retrieval", sims, relevant)
    if details is not None:
        details["retrieval_rr@10"] = reciprocal_ranks_at_k(sims, relevant, 10)
    return {f"retrieval_{k}": m[k] for k in ("mrr@10", "recall@1", "recall@10")}


def graded_spearman(z1: np.ndarray, z2: np.ndarray, grades: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    cos = (_unit(z1) * _unit(z2)).sum(1)
    return float(spearmanr(cos, np.asarray(grades, dtype=np.float64)).statistic)


def probe_scores(ztr: np.ndarray, ytr: Sequence, zte: np.ndarray, yte: Sequence, seed: int = 42,
                 details: dict | None = None) -> dict[str, float]:
    """Logistic regression (MTEB's classifier: max_iter 100) and a 10-NN cosine vote, trained on frozen vectors.
    ``details``: filled with the per-test-example correctness (``probe_logreg_correct``, ``probe_knn10_correct``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    ytr, yte = np.asarray([str(y) for y in ytr]), np.asarray([str(y) for y in yte])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter=100 is part of the protocol
        lr = LogisticRegression(max_iter=100, random_state=seed).fit(ztr, ytr)
    knn = KNeighborsClassifier(n_neighbors=min(10, len(ytr)), metric="cosine").fit(ztr, ytr)
    right = {"logreg": lr.predict(zte) == yte, "knn10": knn.predict(zte) == yte}
    if details is not None:
        details.update({f"probe_{k}_correct": v.astype(np.float64) for k, v in right.items()})
    return {f"probe_{k}_acc": float(v.mean()) for k, v in right.items()}


def cluster_v_measure(z: np.ndarray, labels: Sequence, n_runs: int = 10, batch_size: int = 500) -> float:
    """MTEB's clustering protocol: MiniBatchKMeans with k = number of labels, V-measure averaged over seeds."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import v_measure_score

    labels = [str(y) for y in labels]
    k = len(set(labels))
    scores = [v_measure_score(labels, MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init="auto",
                                                      random_state=s).fit_predict(z)) for s in range(n_runs)]
    return float(np.mean(scores))


def evaluate_embedder(embed: Embedder, data: ZeroShotData, details: dict | None = None) -> dict[str, float]:
    """Embed every text once, then every metric of :data:`METRICS`. ``details``: filled with the per-example
    values the paired tests resample (:data:`PER_EXAMPLE`: reciprocal rank per query, probe correctness per test
    sentence)."""
    texts = data.texts()
    z = np.asarray(embed(texts), dtype=np.float32)
    if not np.isfinite(z).all():
        raise ValueError("the embedder returned non-finite vectors (NaN/Inf)")
    row = {t: i for i, t in enumerate(texts)}
    get = lambda ts: z[[row[t] for t in ts]]  # noqa: E731
    out = retrieval_scores(get(data.queries), get(data.corpus), data.relevant, details)
    out["graded_spearman"] = graded_spearman(get(data.pairs.texts), get(data.pairs.texts2), data.pairs.labels)
    out.update(probe_scores(get(data.probe_train.texts), data.probe_train.labels, get(data.probe_test.texts),
                            data.probe_test.labels, details=details))
    out["cluster_v_measure"] = cluster_v_measure(get(data.cluster.texts), data.cluster.labels)
    return out


# ----------------------------------------------------------------------------------------------- embedders


def prompted(texts: Sequence[str], prompt: str | None) -> list[str]:
    """``prompt.format(text=t)`` for every text (the texts themselves when ``prompt`` is None)."""
    return list(texts) if not prompt else [prompt.format(text=t) for t in texts]


def cache_embedder(cache: TokenCache, pooler: torch.nn.Module, prompt: str | None = None,
                   batch_size: int = 64, *, layers=None, tokens: str = "all") -> Embedder:
    """texts -> ``pooler`` over their cached token states (``[N, dim]`` float32, input order). With ``prompt`` the
    cache must hold the prompted texts (:func:`prompted`). ``layers`` / ``tokens``: the states the pooler reads
    (:meth:`TokenCache.batch`; an Encoder's own ``layers`` / ``tokens``, so it is scored on what it trained on).
    The backbone never runs here."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        idx = np.asarray(cache.lookup(prompted(texts, prompt)), dtype=np.int64)
        order = np.argsort(cache.lengths[idx], kind="stable")
        out = None
        pooler.eval()
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                b = order[s:s + batch_size]
                h, m = cache.batch(idx[b], layers=layers, tokens=tokens)
                z = pooler(h, m).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(idx), z.shape[1]), dtype=np.float32)
                out[b] = z
        return out if out is not None else np.zeros((0, 0), np.float32)

    return embed


def seed_group(label: str) -> str:
    """The system a seeded run belongs to: ``minilm-glot-s2`` -> ``minilm-glot`` (other labels unchanged)."""
    return re.sub(r"-s\d+$", "", label)


def group_seeds(results: list[dict]) -> list[dict]:
    """Runs that differ only in their ``-sN`` suffix -> one row: ``scores`` and ``details`` hold one entry per seed,
    ``runs`` lists the run labels. First-seen order."""
    groups: dict[str, dict] = {}
    for r in results:
        g = groups.setdefault(seed_group(r["system"]), {"system": seed_group(r["system"]), "kind": r["kind"],
                                                        "runs": [], "scores": {}, "details": {}})
        if g["kind"] != r["kind"]:
            raise ValueError(f"{r['system']}: a {r['kind']} run cannot share a row with {g['kind']} runs")
        g["runs"].append(r["system"])
        for k, v in r["scores"].items():
            g["scores"].setdefault(k, []).append(v)
        for k, v in (r.get("details") or {}).items():
            g["details"].setdefault(k, []).append(np.asarray(v, dtype=np.float64))
    return list(groups.values())


def paired_tests(groups: list[dict], n_resamples: int = 10_000) -> list[dict]:
    """Every trained row against every baseline row, on each metric of :data:`PER_EXAMPLE`: the paired bootstrap
    over the shared test examples of the seed-averaged per-example values (reciprocal rank, correctness), from
    :func:`glotpool.experiments.significance.paired_bootstrap`."""
    from glotpool.experiments.significance import paired_bootstrap

    out = []
    for a in (g for g in groups if g["kind"] == "trained"):
        for b in (g for g in groups if g["kind"] != "trained"):
            for metric, key in PER_EXAMPLE.items():
                if key not in a["details"] or key not in b["details"]:
                    continue
                va, vb = np.mean(a["details"][key], axis=0), np.mean(b["details"][key], axis=0)
                # kind "accuracy": the metric is the mean of the per-example values (golds are not read)
                t = paired_bootstrap(va, vb, np.zeros(len(va)), "accuracy", n_resamples=n_resamples)
                out.append({"system": a["system"], "baseline": b["system"], "metric": metric, "delta": t.delta,
                            "low": t.low, "high": t.high, "p_value": t.p_value, "seeds": len(a["runs"])})
    return out


def format_tests(tests: list[dict], scale: float = 100.0) -> str:
    """Markdown table of :func:`paired_tests`: Δ (trained − baseline) with its 95 % interval and p-value."""
    lines = ["| system | vs baseline | metric | Δ [95 % CI] | p |", "|---|---|---|---|---|"]
    for t in tests:
        p = "< 0.001" if t["p_value"] < 1e-3 else f"{t['p_value']:.3f}"
        lines.append(f"| {t['system']} | {t['baseline']} | {t['metric']} | {t['delta'] * scale:+.1f} "
                     f"[{t['low'] * scale:+.1f}, {t['high'] * scale:+.1f}] | {p} |")
    return "\n".join(lines) + "\n"


def format_table(results: list[dict], metrics: Sequence[str] = METRICS, scale: float = 100.0) -> str:
    """Markdown table: one row per system (``{"system", "scores": {metric: [values per seed]}}`` or floats)."""
    from glotpool.experiments.runs import fmt_mean_std

    short = {"retrieval_mrr@10": "SNLI MRR@10", "retrieval_recall@1": "SNLI R@1", "retrieval_recall@10": "SNLI R@10",
             "graded_spearman": "SNLI graded ρ", "probe_logreg_acc": "P&L logreg", "probe_knn10_acc": "P&L 10-NN",
             "cluster_v_measure": "P&L V-meas.", "mteb_classification_acc": "MTEB cls", "mteb_sts_spearman":
             "MTEB STS ρ"}
    lines = ["| system | " + " | ".join(short.get(m, m) for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for r in results:
        cells = []
        for m in metrics:
            v = r["scores"].get(m)
            vals = v if isinstance(v, (list, tuple)) else [v]
            vals = [x for x in vals if x is not None]
            cells.append("n/a" if not vals else fmt_mean_std(vals, scale) if len(vals) > 1 else f"{vals[0] * scale:.1f}")
        lines.append(f"| {r['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
