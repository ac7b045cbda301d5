"""``glotpool layers``: where a task lives in a frozen backbone — a cheap probe per hidden layer, scored on dev.

    curve = run_layers(LayerSettings(backbone="smollm2", source=TaskSource("pang-lee")), "runs/layers-pang-lee")
    curve["best_layer"]      # the hidden_states index (0 = embeddings) with the best dev metric

One backbone pass with every hidden layer (``layers="all"``) over the **train and dev texts only** (the test split
is never read) mean-pools each layer over the text's own tokens (a prompt's tokens left out; echo: the second copy).
Per layer, classification tasks fit :func:`~glotpool.experiments.probe.fit_probe` (standardised features,
LogisticRegression, ``C`` chosen on dev); STS tasks score the cosine of the two texts' vectors (nothing trained).
Also measured per layer: GLOT's token graph at its default τ (edges per token, density) on a sample of train texts.

Writes ``results.json``, ``results.md`` and ``layers.png`` (dev metric and graph density vs layer). The pooled
features and graph numbers are stored in ``features.safetensors`` + ``features.json``, keyed on every input
(backbone fingerprint with prompt and max_length, the texts, the sample), and ``results.json`` records the
probes' inputs: a rerun with the same inputs reuses both, one with other targets or probe settings refits the probes.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from glotpool.data import LoadedTask, TaskSource
from glotpool.experiments.probe import C_GRID, MAX_EXTENSIONS, fit_probe, pair_features
from glotpool.experiments.scaffold import backbone_variant, data_warnings, graph_density_of
from glotpool.io_utils import atomic_path, atomic_write_json, atomic_write_text, sha256_texts
from glotpool.states.backbone import Backbone
from glotpool.states.cache import unique_texts
from glotpool.training.heads import default_metric, head_class
from glotpool.training.metrics import compute_metrics
from glotpool.training.trainer import CachedSplits, prepare_splits

FEATURES_VERSION = 1
PROBE_SPLITS = ("train", "dev")  # what the curve reads: never test


@dataclass
class LayerSettings:
    backbone: str = "minilm"
    source: TaskSource = field(default_factory=TaskSource)
    prompt: str | None = None  # a preset (prompteol, echo) or a template with {text}; the probe pools the text span
    max_length: int = 256
    batch_size: int = 32
    graph_sample: int = 64  # train texts whose GLOT graphs (default τ) give the density per layer
    show_progress: bool = True
    jobs: int = -1  # processes fitting the per-layer probes (joblib; -1 = one per core, 1 = in this process)


class _TextRows:
    """What :func:`prepare_splits` needs of a cache: text -> row of the feature matrix."""

    def __init__(self, texts: list[str]):
        self._row = {t: i for i, t in enumerate(texts)}

    def lookup(self, texts) -> list[int]:
        return [self._row[t] for t in texts]


def run_layers(settings: LayerSettings, out_dir: str | Path, backbone: Backbone | None = None,
               task: LoadedTask | None = None) -> dict:
    """The per-layer dev curve (see the module doc); ``backbone``: an already loaded one to reuse (any layer /
    prompt setting: the pass reads every layer with ``settings.prompt``); ``task``: an already loaded task."""
    from glotpool.states.backbone import load_backbone

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    standalone = task is None
    task = task or settings.source.load()
    missing = [s for s in PROBE_SPLITS if s not in task.splits]
    if missing:
        raise ValueError(f"the layer probe needs train and dev splits; {task.name} has no {', '.join(missing)}")
    if task.task_type == "retrieval":
        raise ValueError("the layer probe scores classification (linear probe) or sts (cosine) tasks; "
                         "retrieval has neither labels nor scores to probe")
    bb = (backbone_variant(backbone, prompt=settings.prompt, layers="all") if backbone is not None else
          load_backbone(settings.backbone, max_length=settings.max_length, prompt=settings.prompt, layers="all"))
    splits = {s: task.splits[s] for s in PROBE_SPLITS}
    if standalone:
        data_warnings(LoadedTask(task.name, task.task_type, splits, task.label_names, task.score_range), bb)
    texts = unique_texts(*(col for ds in splits.values() for col in (ds.texts, ds.texts2)))
    data = prepare_splits(_TextRows(texts), splits, task.task_type, label_names=task.label_names,
                          score_range=task.score_range)
    train_rows = np.unique(data["train"].idx1)
    sample = np.sort(np.random.default_rng(0).choice(train_rows, size=min(settings.graph_sample, len(train_rows)),
                                                     replace=False))
    feats, graph, features_key = layer_features(bb, texts, sample, out_dir, settings.batch_size,
                                                settings.show_progress)
    metric = default_metric(task.task_type)
    probe_key = probe_inputs_key(features_key, data, metric)
    done = out_dir / "results.json"
    stored = json.loads(done.read_text()) if done.is_file() else {}
    if stored.get("probe_key") == probe_key:
        return stored  # the same probes on the same inputs: a rerun (a resumed suite) reuses them
    # One process per core (each fit is single-threaded, see fit_probe): 31 SmolLM2 layers of SNLI (5,000 pairs)
    # took 12 min on 2 cores, against about 35 min one layer after another.
    from joblib import Parallel, delayed

    probes = Parallel(n_jobs=settings.jobs)(delayed(probe_layer)(feats[:, k].float().numpy(), data, metric)
                                            for k in range(feats.shape[1]))
    points = [{"layer": k, "dev": probe["dev"][metric], "C": probe.get("C"), **graph[k]}
              for k, probe in enumerate(probes)]
    best = max(points, key=lambda p: (p["dev"], p["layer"]))  # ties: the deeper layer
    from glotpool.pooling.glot import GLOTConfig

    result = {"task": task.name, "task_type": task.task_type, "metric": metric, "settings": asdict(settings),
              "backbone": bb.fingerprint(), "sizes": {s: len(splits[s]) for s in PROBE_SPLITS},
              "probe": ("LogisticRegression on standardised mean vectors, C chosen on dev from "
                        f"{list(C_GRID)}" if head_class(task.task_type).is_classification
                        else "cosine of the two texts' mean vectors (no training)"),
              "tau": GLOTConfig.tau, "graph_sample": len(sample), "num_layers": feats.shape[1] - 1,
              "points": points, "best_layer": best["layer"], "best_dev": best["dev"], "probe_key": probe_key,
              "total_seconds": time.perf_counter() - t0}
    atomic_write_json(out_dir / "results.json", result)
    atomic_write_text(out_dir / "results.md", format_layer_table(result))
    from glotpool.experiments.report import plot_layer_curve

    plot_layer_curve(points, best["layer"], out_dir / "layers.png", metric,
                     title=f"{task.name}, frozen {settings.backbone}"
                           + (f", prompt {settings.prompt}" if settings.prompt else "") + f": dev {metric} per layer")
    return result


def probe_inputs_key(features_key: str, data: CachedSplits, metric: str) -> str:
    """What the per-layer probes depend on: the features (their key covers backbone, texts and graph sample), each
    split's rows and targets, the metric and the probe's C grid."""
    splits = {s: [data[s].idx1.tolist(), None if data[s].idx2 is None else data[s].idx2.tolist(),
                  np.asarray(data[s].targets).tolist()] for s in PROBE_SPLITS}
    return hashlib.sha256(json.dumps({"features": features_key, "metric": metric, "C": list(C_GRID),
                                      "extensions": MAX_EXTENSIONS, "splits": splits},
                                     sort_keys=True).encode()).hexdigest()


def probe_layer(z: np.ndarray, data: CachedSplits, metric: str) -> dict:
    """One layer's dev score from per-text vectors ``z [N, D]``: the linear probe (classification), or the cosine
    of the pair's vectors (sts)."""
    if head_class(data.task_type).is_classification:
        return fit_probe({s: pair_features(z, data[s]) for s in data.splits},
                         {s: data[s].targets for s in data.splits}, data.task_type, data.num_labels, metric=metric)
    dev = data["dev"]
    a, b = z[dev.idx1], z[dev.idx2]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"dev": compute_metrics(data.task_type, cos, dev.targets)}


def layer_features(bb: Backbone, texts: list[str], sample: np.ndarray, folder: Path, batch_size: int = 32,
                   show_progress: bool = True) -> tuple[torch.Tensor, list[dict], str]:
    """``(Z [N, K, D] float32: each text's mean over its text tokens, per hidden layer; per layer GLOT's graph
    numbers on the ``sample`` rows; the features' key)`` from one backbone pass (``bb`` built with ``layers="all"``), or from
    ``folder`` when a pass with the same inputs is stored there."""
    from glotpool.pooling import build_pooler

    key = hashlib.sha256(json.dumps({"backbone": bb.fingerprint(), "texts": sha256_texts(texts),
                                     "sample": sample.tolist(), "version": FEATURES_VERSION},
                                    sort_keys=True, default=str).encode()).hexdigest()
    meta_file, feat_file = folder / "features.json", folder / "features.safetensors"
    if meta_file.is_file() and feat_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("key") == key:
            from safetensors.torch import load_file

            return load_file(str(feat_file))["features"], meta["graph"], key
    from tqdm.auto import tqdm

    from glotpool.states.backbone import iter_encoded

    K, D = bb.num_layers + 1, bb.dim
    z = torch.zeros(len(texts), K, D)
    keep = set(sample.tolist())
    by_row: dict[int, torch.Tensor] = {}  # sampled row -> its text tokens' states [Lt, K, D]
    empty = []
    bar = tqdm(total=len(texts), desc="layer probe pass", unit="text", disable=not show_progress or None)
    for idx, h, mask, text_mask in iter_encoded(bb, texts, batch_size, with_text_mask=True):
        h, tm = h.float().cpu(), text_mask.cpu().bool()
        n = tm.sum(1)
        empty += [i for i, c in zip(idx, n.tolist()) if c == 0]
        z[torch.as_tensor(idx)] = (h * tm[:, :, None, None]).sum(1) / n.clamp_min(1)[:, None, None]
        for j, i in enumerate(idx):
            if i in keep and n[j] > 0:
                by_row[i] = h[j][tm[j]].clone()
        bar.update(len(idx))
    bar.close()
    if empty:
        raise ValueError(f"{len(empty)} text(s) keep no text token after truncation to max_length="
                         f"{bb.config.max_length} (the prompt fills it): raise --max-length")
    graph_states = [by_row[i] for i in sample.tolist() if i in by_row]
    pool = build_pooler("glot", in_dim=D)  # GLOT's defaults: the τ every reader of the table knows
    graph = []
    with torch.inference_mode():
        for k in range(K):
            graph.append({"layer": k, **graph_density_of(pool, (_padded([g[:, k] for g in graph_states[s:s + 32]])
                                                                for s in range(0, len(graph_states), 32)))})
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    with atomic_path(feat_file) as tmp:
        save_file({"features": z.contiguous()}, str(tmp))
    atomic_write_json(meta_file, {"key": key, "graph": graph, "n": len(texts), "layers": K})  # last: complete
    return z, graph, key


def _padded(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[L_i, D]`` tensors -> ``(H [B, L, D], mask [B, L])``."""
    h = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
    lens = torch.tensor([len(s) for s in states])
    return h, (torch.arange(h.shape[1])[None] < lens[:, None]).long()


def format_layer_table(result: dict) -> str:
    s, metric = result["settings"], result["metric"]
    best = result["best_layer"]
    lines = [f"# {result['task']} — dev {metric} per hidden layer of frozen {s['backbone']}", "",
             f"Mean pooling over each text's own tokens (prompt: {s['prompt'] or 'none'}); probe: {result['probe']}. "
             "Splits " + ", ".join(f"{k} {v}" for k, v in result["sizes"].items()) + " (the test split is never "
             f"read). Layer 0 = the embeddings, {result['num_layers']} = the last layer. GLOT's token graph at its "
             f"default τ = {result['tau']} on {result['graph_sample']} train texts.", "",
             f"**Best dev layer: {best}** (dev {metric} {100 * result['best_dev']:.1f} %).", "",
             f"| layer | dev {metric} | C | edges per token | density |", "|---|---|---|---|---|"]
    for p in result["points"]:
        dev = f"{100 * p['dev']:.1f}"
        c = "—" if p["C"] is None else f"{p['C']:g}"
        lines.append(f"| {p['layer']} | {f'**{dev}**' if p['layer'] == best else dev} | {c} | "
                     f"{p['edges_per_token']:.1f} | {p['density']:.3f} |")
    return "\n".join(lines) + "\n"
