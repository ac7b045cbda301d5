"""Efficiency benchmark: GLOT on cached states vs LoRA vs full fine-tuning, same backbone, data and step count.

    res = run_benchmark(BenchConfig(backbone="minilm", n_train=400, steps=60), out_dir="runs/bench-minilm")
    print(res["table"])            # markdown; also OUT/results.json, OUT/results.md, OUT/efficiency.png

Methods (each trains ``steps`` AdamW steps on the same seeded batch sequence, then scores test accuracy):

- ``glot``: the backbone runs ONCE over the texts (``cache``: one-time cost, reported separately and amortised over
  ``epochs``); the pooler + linear head then train on the cached token states without the backbone.
- ``lora``: peft LoRA, once per rank in ``lora_ranks`` (default r = 8 and r = 64, so the parameter ratio is not an
  artefact of one rank; rows ``lora_r8``, ``lora_r64``), on PEFT's default target modules for the model type (else
  the attention projections: BERT query/key/value, Llama-style q/k/v/o_proj) with PEFT's default alpha unless
  ``lora_targets`` / ``lora_alpha`` say otherwise + mean pooling + linear head; the backbone runs forward AND
  backward every step.
- ``full``: every backbone weight trains + mean pooling + linear head.

Every phase runs in its own fresh Python process, so its peak memory is its own: CPU = peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``; "base" = the RSS after imports), GPU = ``torch.cuda.max_memory_allocated``.
Time per epoch = median time per step (first step = warm-up, excluded) x ceil(n_train / batch_size).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from glotpool.io_utils import atomic_path, atomic_write_json, atomic_write_text

METHODS = ("glot", "lora", "full")
METHOD_LABELS = {"glot": "GLOT (cached states)", "lora": "LoRA", "full": "Full fine-tuning"}
# LoRA target modules by naming family (attention projections only)
LORA_TARGETS = {"bert": ["query", "key", "value"], "llama": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@dataclass
class BenchConfig:
    backbone: str = "minilm"  # preset, hub id or folder (glotpool.states.backbone.load_backbone)
    task: str = "pang-lee"  # offline classification preset (glotpool.data.load_task)
    data_dir: str | None = None  # default $GLOTPOOL_DATA or ./data
    n_train: int = 400
    n_test: int = 200
    steps: int = 60  # optimizer steps, the same for every method
    batch_size: int = 16
    epochs: int = 10  # epochs to amortise GLOT's one-time caching over
    max_length: int = 64  # truncation (tokens); the same for every method
    pooler: str = "glot:hidden_dim=128,readout_hidden=128"  # glotpool.experiments.runs.PoolerSpec text form
    lora_ranks: tuple = (8, 64)  # LoRA runs once per rank: GLOT is reported against each
    lora_alpha: int | None = None  # None: PEFT's default (LoraConfig.lora_alpha)
    lora_targets: tuple | None = None  # None: PEFT's default for the model type, else the attention projections
    lr_glot: float = 1e-3
    lr_lora: float = 5e-4
    lr_full: float = 5e-5
    lr_head: float = 1e-3  # the linear head of LoRA / full FT (a fresh head needs a pooler-like rate)
    methods: tuple = METHODS
    threads: int = 1  # torch threads per worker (1 = stable timings on a shared CPU)
    device: str = "cpu"
    seed: int = 0
    timeout_s: int = 1800  # per worker process

    def __post_init__(self):
        self.methods = tuple(self.methods)
        self.lora_ranks = tuple(int(r) for r in self.lora_ranks)
        if not self.lora_ranks or min(self.lora_ranks) < 1:
            raise ValueError(f"lora_ranks must be ranks >= 1, got {self.lora_ranks}")
        self.lora_targets = tuple(self.lora_targets) if self.lora_targets else None
        bad = sorted(set(self.methods) - set(METHODS))
        if bad or not self.methods:
            raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
        for name in ("n_train", "n_test", "steps", "batch_size", "epochs", "max_length", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


TINY = dict(n_train=24, n_test=16, steps=3, batch_size=8, epochs=2, max_length=32, lora_ranks=(8, 64),
            pooler="glot:hidden_dim=32,readout_hidden=32")


def tiny_config(**overrides) -> BenchConfig:
    """A seconds-long configuration for smoke tests (``glotpool bench-efficiency --tiny``)."""
    return BenchConfig(**{**TINY, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# parent: data, workers, report


def load_bench_data(cfg: BenchConfig) -> dict:
    """``{"train": {"texts", "labels"}, "test": {...}, "label_names"}``: seeded, stratified subsamples."""
    from glotpool.data import load_task, subsample

    preset, splits = load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed)
    if preset.task_type != "single":
        raise ValueError(f"the efficiency benchmark needs a single-sentence classification task; {cfg.task!r} is "
                         f"{preset.task_type!r}")
    train = subsample(splits["train"], cfg.n_train, seed=cfg.seed)
    test = subsample(splits["test"], cfg.n_test, seed=cfg.seed)
    names = list(preset.label_names or sorted({str(y) for y in train.labels}))
    idx = {n: i for i, n in enumerate(names)}
    return {"label_names": names,
            **{k: {"texts": list(ds.texts), "labels": [idx[str(y)] for y in ds.labels]}
               for k, ds in (("train", train), ("test", test))}}


def _run_worker(phase: str, cfg: BenchConfig, work: Path) -> dict:
    """Run one phase in a fresh interpreter; return its JSON record."""
    out = work / f"{phase}.json"
    cmd = [sys.executable, "-c", "import sys; from glotpool.experiments.efficiency import _worker_main; "
           "sys.exit(_worker_main(sys.argv[1:]))", phase, str(work / "config.json"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=cfg.timeout_s)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"efficiency worker {phase!r} failed (exit {proc.returncode}):\n{tail}")
    rec = json.loads(out.read_text())
    rec["process_seconds"] = time.perf_counter() - t0
    return rec


def run_benchmark(cfg: BenchConfig, out_dir: str | os.PathLike | None = None, log=print) -> dict:
    """Run every method of ``cfg`` and return the results dict (``"table"`` holds the markdown)."""
    data = load_bench_data(cfg)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="glotpool-bench-") as tmp:
        work = Path(tmp)
        atomic_write_json(work / "config.json", {"config": asdict(cfg), "data": data})
        phases = (["glot_cache", "glot_train"] if "glot" in cfg.methods else []) + \
            [key for m in cfg.methods if m != "glot" for key in _row_keys(cfg, m)]
        for phase in phases:
            log(f"[bench-efficiency] {phase} ...")
            results[phase] = _run_worker(phase, cfg, work)
    report = summarize(cfg, results, n_train=len(data["train"]["texts"]), n_test=len(data["test"]["texts"]))
    if out_dir is not None:
        save_report(report, out_dir)
    return report


def _row_keys(cfg: BenchConfig, method: str) -> list[str]:
    """A method's result rows (and worker phases): ``lora`` has one per rank (``lora_r8``, ...)."""
    return [f"lora_r{r}" for r in cfg.lora_ranks] if method == "lora" else [method]


def _epoch_steps(cfg: BenchConfig, n_train: int) -> int:
    return math.ceil(n_train / cfg.batch_size)


def summarize(cfg: BenchConfig, results: dict, n_train: int, n_test: int) -> dict:
    """Per-method rows (params, memory, s/step, s/epoch, accuracy), ratios vs GLOT, markdown table."""
    from glotpool.training.trainer import environment

    spe = _epoch_steps(cfg, n_train)
    rows = {}
    for m, key in ((m, key) for m in cfg.methods for key in _row_keys(cfg, m)):
        r = results["glot_train" if m == "glot" else key]
        label = METHOD_LABELS[m] + (f" r={key[len('lora_r'):]}" if m == "lora" else "")
        row = {"method": m, "label": label, "trainable_parameters": r["trainable_parameters"],
               "total_parameters": r["total_parameters"], "seconds_per_step": r["seconds_per_step"],
               "seconds_per_epoch": r["seconds_per_step"] * spe, "test_accuracy": r["test_accuracy"],
               "peak_memory_mb": r["peak_memory_mb"], "base_memory_mb": r["base_memory_mb"],
               "train_seconds": r["train_seconds"], "final_loss": r["final_loss"]}
        if m == "glot":
            c = results["glot_cache"]
            row["cache_seconds"] = c["cache_seconds"]
            row["cache_peak_memory_mb"] = c["peak_memory_mb"]
            row["seconds_per_epoch_amortised"] = row["seconds_per_epoch"] + c["cache_seconds"] / cfg.epochs
        rows[key] = row
    ratios = {}
    if "glot" in rows:
        g = rows["glot"]
        for m in rows:
            if m != "glot":
                ratios[m] = {
                    "speedup_per_epoch": rows[m]["seconds_per_epoch"] / max(g["seconds_per_epoch"], 1e-12),
                    "speedup_per_epoch_amortised": rows[m]["seconds_per_epoch"] /
                    max(g["seconds_per_epoch_amortised"], 1e-12),
                    "fewer_trainable_parameters": rows[m]["trainable_parameters"] /
                    max(g["trainable_parameters"], 1)}
    targets = {}
    for m, q in ratios.items():
        if m.startswith("lora"):
            targets[f"speedup_vs_{m}>=100x"] = q["speedup_per_epoch"] >= 100
            targets[f"params_vs_{m}>=20x_fewer"] = q["fewer_trainable_parameters"] >= 20
    report = {"config": asdict(cfg), "n_train": n_train, "n_test": n_test, "steps_per_epoch": spe, "rows": rows,
              "ratios": ratios, "targets": targets, "workers": results, "environment": environment()}
    report["table"] = format_table(report)
    return report


def _mb(x: float) -> str:
    return f"{x:,.0f}"


def format_table(report: dict) -> str:
    cfg, rows, E = report["config"], report["rows"], report["config"]["epochs"]
    mem = "peak GPU MB" if cfg["device"].startswith("cuda") else "peak RSS MB (base)"
    lines = [f"Backbone `{cfg['backbone']}`, task `{cfg['task']}`: {report['n_train']} train / {report['n_test']} "
             f"test sentences, {cfg['steps']} steps of batch {cfg['batch_size']} for every method "
             f"({report['steps_per_epoch']} steps = 1 epoch), max_length {cfg['max_length']}, device "
             f"{cfg['device']}, {cfg['threads']} thread(s). GLOT pooler `{cfg['pooler']}`; LoRA r="
             f"{', '.join(map(str, cfg['lora_ranks']))}, alpha {cfg['lora_alpha'] or 'PEFT default'}, targets "
             f"{', '.join(cfg['lora_targets']) if cfg['lora_targets'] else 'PEFT default'}.",
             "", f"| method | trainable params | {mem} | s / step | s / epoch | s / epoch incl. caching "
             f"(amortised over {E} epochs) | test accuracy |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m, r in rows.items():
        amort = f"{r['seconds_per_epoch_amortised']:.3f}" if "seconds_per_epoch_amortised" in r else \
            f"{r['seconds_per_epoch']:.3f}"
        lines.append(f"| {r['label']} | {r['trainable_parameters']:,} | {_mb(r['peak_memory_mb'])} "
                     f"({_mb(r['base_memory_mb'])}) | {r['seconds_per_step']:.4f} | {r['seconds_per_epoch']:.3f} | "
                     f"{amort} | {r['test_accuracy']:.3f} |")
    if "glot" in rows:
        g = rows["glot"]
        lines += ["", f"GLOT one-time caching: {g['cache_seconds']:.2f} s for {report['n_train']} train texts "
                      f"(peak RSS {_mb(g['cache_peak_memory_mb'])} MB); training then never runs the backbone."]
    for m, q in report["ratios"].items():
        lines.append(f"- vs {rows[m]['label']}: {q['speedup_per_epoch']:.1f}x faster per epoch "
                     f"({q['speedup_per_epoch_amortised']:.1f}x incl. amortised caching), "
                     f"{q['fewer_trainable_parameters']:.1f}x fewer trainable parameters")
    return "\n".join(lines) + "\n"


def save_report(report: dict, out_dir: str | os.PathLike) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", {k: v for k, v in report.items() if k != "table"})
    atomic_write_text(out / "results.md", report["table"])
    plot_report(report, out / "efficiency.png")


def plot_report(report: dict, path: str | os.PathLike) -> None:
    """Four bar panels (log scale where it spans decades); written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report["rows"].values())
    labels = [r["label"].replace(" (", "\n(") for r in rows]
    colors = {"glot": "tab:green", "lora": "tab:orange", "full": "tab:red"}
    c = [colors[r["method"]] for r in rows]
    panels = [("trainable parameters", [r["trainable_parameters"] for r in rows], True),
              ("seconds / epoch", [r["seconds_per_epoch"] for r in rows], True),
              ("peak memory (MB)", [r["peak_memory_mb"] for r in rows], False),
              ("test accuracy", [r["test_accuracy"] for r in rows], False)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (title, vals, log) in zip(axes, panels):
        ax.bar(range(len(vals)), vals, color=c)
        ax.set_xticks(range(len(vals)), labels, fontsize=8)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
    fig.suptitle(f"{report['config']['backbone']}: {report['config']['steps']} steps, batch "
                 f"{report['config']['batch_size']}, {report['n_train']} train sentences")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# workers (run in a fresh process: python -c "... _worker_main(...)")


def _peak_memory_mb(device) -> float:
    import resource

    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list:
    """The same ``steps`` batches (index arrays) for every method: seeded reshuffle at each epoch."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, order = [], np.array([], dtype=np.int64)
    while len(out) < steps:
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def _timed_steps(step_fn, batches, device) -> tuple[list[float], list[float]]:
    import torch

    times, losses = [], []
    for b in batches:
        t = time.perf_counter()
        losses.append(step_fn(b))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return times, losses


def _step_record(times, losses, trainable, total, acc, device, base_mb) -> dict:
    import statistics

    steady = times[1:] if len(times) > 1 else times  # the first step pays one-off allocations
    # median: robust to a step slowed down by another process on a shared machine
    return {"seconds_per_step": statistics.median(steady), "mean_seconds_per_step": sum(steady) / len(steady),
            "step_seconds": times, "train_seconds": sum(times),
            "final_loss": losses[-1], "losses": losses, "trainable_parameters": int(trainable),
            "total_parameters": int(total), "test_accuracy": float(acc),
            "peak_memory_mb": _peak_memory_mb(device), "base_memory_mb": base_mb}


def _worker_main(argv: list[str]) -> int:
    phase, cfg_file, out_file = argv
    import torch

    spec = json.loads(Path(cfg_file).read_text())
    cfg, data = BenchConfig(**spec["config"]), spec["data"]
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    import glotpool.states.backbone as _bb  # noqa: F401 - imports counted in the base memory
    import transformers  # noqa: F401
    base_mb = _peak_memory_mb(torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    work = Path(cfg_file).parent
    fn = {"glot_cache": _glot_cache, "glot_train": _glot_train, "full": _finetune}.get(phase)
    fn = fn or (_finetune if phase.startswith("lora_r") else None)
    if fn is None:
        raise ValueError(f"unknown benchmark phase {phase!r}")
    rec = fn(cfg, data, work, device, base_mb, phase)
    atomic_write_json(out_file, rec)
    return 0


def _load_backbone(cfg: BenchConfig, device):
    from glotpool.states.backbone import load_backbone

    return load_backbone(cfg.backbone, max_length=cfg.max_length, device=str(device))


def _glot_cache(cfg, data, work, device, base_mb, phase) -> dict:
    from glotpool.states.cache import build_cache

    t0 = time.perf_counter()
    bb = _load_backbone(cfg, device)
    load_s = time.perf_counter() - t0
    t = time.perf_counter()
    build_cache(bb, data["train"]["texts"], work / "cache-train", batch_size=32, show_progress=False)
    cache_s = time.perf_counter() - t
    t = time.perf_counter()
    build_cache(bb, data["test"]["texts"], work / "cache-test", batch_size=32, show_progress=False)
    return {"cache_seconds": cache_s, "test_cache_seconds": time.perf_counter() - t, "load_seconds": load_s,
            "peak_memory_mb": _peak_memory_mb(device), "base_memory_mb": base_mb}


def _glot_train(cfg, data, work, device, base_mb, phase) -> dict:
    import numpy as np
    import torch

    from glotpool.states.cache import open_cache
    from glotpool.experiments.runs import PoolerSpec
    from glotpool.pooling import build_pooler
    from glotpool.training.heads import build_head
    from glotpool.training.trainer import seed_everything

    train_cache, test_cache = open_cache(work / "cache-train"), open_cache(work / "cache-test")
    # cache rows are in input order, so row i = data["train"]["texts"][i]
    y_train = torch.tensor(data["train"]["labels"])
    spec = PoolerSpec.parse(cfg.pooler)
    seed_everything(cfg.seed)
    pooler = build_pooler(spec.name, in_dim=train_cache.dim, **spec.kwargs).to(device)
    head = build_head("single", pooler.out_dim, num_labels=len(data["label_names"])).to(device)
    params = [p for m in (pooler, head) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr_glot)
    pooler.train(), head.train()

    def step(idx):
        h, mask = train_cache.batch(idx)
        loss = head.loss(head(pooler(h.to(device), mask.to(device))), y_train[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    times, losses = _timed_steps(step, _batches(len(train_cache), cfg.batch_size, cfg.steps, cfg.seed), device)
    pooler.eval(), head.eval()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(test_cache), 64):
            h, mask = test_cache.batch(np.arange(s, min(s + 64, len(test_cache))))
            preds.append(head(pooler(h.to(device), mask.to(device))).argmax(-1).cpu())
    acc = (torch.cat(preds) == torch.tensor(data["test"]["labels"])).float().mean().item()
    n = sum(p.numel() for p in params)
    return _step_record(times, losses, n, n, acc, device, base_mb)


def lora_targets(model) -> list[str]:
    """Attention projection names of ``model`` for LoRA: BERT-style or Llama-style (ValueError otherwise)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for targets in LORA_TARGETS.values():
        if set(targets) <= names:
            return targets
    raise ValueError(f"cannot find the attention projections of {type(model).__name__} for LoRA (looked for "
                     f"{LORA_TARGETS}); supported: BERT-style and Llama-style backbones")


def lora_target_modules(model, targets=None) -> list[str] | None:
    """``targets`` if given; else None (PEFT's default for the model type) when PEFT has one; else the attention
    projections (:func:`lora_targets`)."""
    if targets:
        return list(targets)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if getattr(getattr(model, "config", None), "model_type", None) in PEFT_DEFAULTS:
        return None
    return lora_targets(model)


def _finetune(cfg, data, work, device, base_mb, phase) -> dict:
    """LoRA or full fine-tuning: backbone (+ adapters) + mean pooling + linear head, trained end to end."""
    import torch

    from glotpool.training.trainer import seed_everything

    bb = _load_backbone(cfg, device)
    seed_everything(cfg.seed)
    model = bb.model
    if phase.startswith("lora_r"):
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        kw = {"lora_alpha": cfg.lora_alpha} if cfg.lora_alpha is not None else {}  # else PEFT's default
        model = get_peft_model(model, LoraConfig(r=int(phase[len("lora_r"):]), lora_dropout=0.0, bias="none",
                                                 target_modules=lora_target_modules(model, cfg.lora_targets), **kw))
        lr = cfg.lr_lora
    else:
        model.requires_grad_(True)
        lr = cfg.lr_full
    model.to(device).train()
    head = torch.nn.Linear(bb.dim, len(data["label_names"])).to(device)
    backbone_params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": backbone_params, "lr": lr},
                             {"params": list(head.parameters()), "lr": cfg.lr_head}])
    tok = bb.tokenizer
    texts, y = data["train"]["texts"], torch.tensor(data["train"]["labels"])

    def embed(batch_texts):
        enc = tok(batch_texts, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        h = model(**enc).last_hidden_state  # [B, L, D]
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)  # mean pooling over real tokens

    def step(idx):
        loss = torch.nn.functional.cross_entropy(head(embed([texts[i] for i in idx])), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    times, losses = _timed_steps(step, _batches(len(texts), cfg.batch_size, cfg.steps, cfg.seed), device)
    model.eval()
    test = data["test"]["texts"]
    with torch.inference_mode():
        preds = torch.cat([head(embed(test[s:s + 32])).argmax(-1).cpu() for s in range(0, len(test), 32)])
    acc = (preds == torch.tensor(data["test"]["labels"])).float().mean().item()
    trainable = sum(p.numel() for p in backbone_params) + sum(p.numel() for p in head.parameters())
    total = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in head.parameters())
    return _step_record(times, losses, trainable, total, acc, device, base_mb)


__all__ = ["BenchConfig", "METHODS", "run_benchmark", "tiny_config", "load_bench_data", "summarize",
           "format_table", "plot_report", "lora_targets", "lora_target_modules"]
