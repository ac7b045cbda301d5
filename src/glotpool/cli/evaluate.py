"""``glotpool evaluate``: zero-shot evaluation of trained encoders and untrained baselines in one table.

    glotpool evaluate --model models/smollm2-glot-nli                 # + mean / last / PromptEOL / MiniLM mean
    glotpool evaluate --model A --model B --baselines "mean minilm:mean" --out results/zs

Every system is scored on the same seeded subsets (see :mod:`glotpool.experiments.zeroshot`): SNLI test as
retrieval and as graded similarity, Pang & Lee as a frozen-vector probe (logistic regression, 10-NN) and as k-means
clustering, and through the real ``mteb.evaluate`` (local classification + STS tasks). Each backbone runs once over
the evaluation texts (a token-state cache per backbone, reused on a rerun with the same --cache-dir); every pooler
then reads the cache.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="zero-shot evaluation of encoders + baselines (SNLI test, Pang & Lee, "
                                               "MTEB)",
                              description="Score trained encoders and untrained pooling baselines on data they never "
                                          "trained on: SNLI-test retrieval and graded similarity, a Pang & Lee probe "
                                          "and clustering, and MTEB's local classification / STS tasks.")
    p.add_argument("--model", action="append", default=[],
                   help="encoder folder (or an embed-train / train OUT holding model/); repeatable")
    p.add_argument("--backbone", default=None,
                   help="backbone of the baselines when no --model is given (preset, hub id or folder)")
    p.add_argument("--baselines", default=None,
                   help="untrained systems, space-separated: POOLER or BACKBONE:POOLER; pooler 'prompteol' = last "
                        "token of the PromptEOL prompt (default: mean, last, prompteol on a decoder backbone; mean, "
                        "cls on an encoder; plus minilm:mean; 'none' for no baselines)")
    p.add_argument("--data-dir", default=None, help="folder of fetched corpora (default $GLOTPOOL_DATA or ./data)")
    p.add_argument("--n-retrieval", type=int, default=1000, help="SNLI test premises (queries)")
    p.add_argument("--n-graded", type=int, default=2000, help="SNLI test pairs for graded similarity")
    p.add_argument("--n-probe", type=int, default=2000, help="Pang & Lee sentences (probe: half train, half test)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the subsets")
    p.add_argument("--no-mteb", action="store_true", help="skip the mteb.evaluate tasks")
    p.add_argument("--max-length", type=int, default=256, help="truncation of baseline backbones")
    p.add_argument("--batch-size", type=int, default=32, help="backbone batch size while caching")
    p.add_argument("--cache-dir", default=None, help="token-state caches (default OUT/cache, else a temporary folder)")
    p.add_argument("--out", default=None, help="write results.json + results.md here")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def _model_folder(path: str) -> Path:
    p = Path(path)
    if not (p / "encoder.json").is_file() and (p / "model" / "encoder.json").is_file():
        return p / "model"
    return p


def _parse_baselines(text: str | None, default_backbone: str | None, is_decoder: bool) -> list[tuple[str | None, str]]:
    if text is not None and text.strip().lower() == "none":
        return []
    if text is None:
        items = (["mean", "last", "prompteol"] if is_decoder else ["mean", "cls"]) if default_backbone else []
        items.append("minilm:mean")
    else:
        items = text.replace(";", " ").split()
    out = []
    for it in items:
        bb, _, pooler = it.rpartition(":")
        out.append((bb or None, pooler))
    return out


@dataclass
class _System:
    """One row of the evaluation: a pooler on one backbone's cached states."""

    label: str
    backbone_key: str  # the backbone's fingerprint (JSON): systems on one backbone share its cache
    pooler: object
    prompt: str | None  # a template the baseline's texts are wrapped in (PromptEOL), else None
    kind: str  # "trained" | "baseline"
    selection: dict = field(default_factory=dict)  # layers / tokens a trained encoder reads


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from glotpool.encoder import Encoder
    from glotpool.experiments import zeroshot as zs
    from glotpool.pooling import build_pooler
    from glotpool.states.backbone import load_backbone
    from glotpool.states.cache import build_cache

    if not args.model and args.backbone is None and args.baselines is None:
        raise ValueError("give --model DIR (a trained encoder), or --backbone / --baselines to score baselines only")
    data = zs.load_zeroshot_data(args.data_dir, n_retrieval=args.n_retrieval, n_graded=args.n_graded,
                                 n_probe=args.n_probe, seed=args.data_seed)
    backbones: dict[str, object] = {}  # key -> Backbone
    systems: list[_System] = []
    for m in args.model:
        folder = _model_folder(m)
        enc = Encoder.from_pretrained(folder, device=args.device)
        key = json.dumps(enc.backbone.fingerprint(), sort_keys=True, default=str)
        backbones.setdefault(key, enc.backbone)
        label = folder.parent.name if folder.name == "model" else folder.name
        if any(s.label == label for s in systems):
            raise ValueError(f"two --model folders are both named {label!r}; their rows would mix")
        selection = {"layers": enc.layers, "tokens": enc.tokens}  # the states the encoder trained on
        systems.append(_System(label, key, enc.pooler, None, "trained", selection))
    first_key = next(iter(backbones), None)
    if first_key is None and args.backbone is not None:
        bb = load_backbone(args.backbone, max_length=args.max_length, device=args.device)
        first_key = json.dumps(bb.fingerprint(), sort_keys=True, default=str)
        backbones[first_key] = bb
    named: dict[str, str] = {}
    first_bb = backbones.get(first_key)
    for bb_name, pooler_name in _parse_baselines(args.baselines, first_key, bool(first_bb and first_bb.is_decoder)):
        if bb_name is None:
            if first_key is None:
                raise ValueError(f"baseline {pooler_name!r} names no backbone; write BACKBONE:{pooler_name} or give "
                                 "--model / --backbone")
            key = first_key
        else:
            if bb_name not in named:
                bb = load_backbone(bb_name, max_length=args.max_length, device=args.device)
                named[bb_name] = json.dumps(bb.fingerprint(), sort_keys=True, default=str)
                backbones.setdefault(named[bb_name], bb)
            key = named[bb_name]
        bb = backbones[key]
        prompt = zs.PROMPTEOL if pooler_name == "prompteol" else None
        pooler = build_pooler("last" if prompt else pooler_name, in_dim=bb.dim)
        short = Path(str(bb.config.name_or_path)).name
        label = f"{short} {pooler_name} (untrained)"
        if any(s.label == label for s in systems):
            continue
        systems.append(_System(label, key, pooler, prompt, "baseline"))

    tmp = None
    if args.cache_dir:
        cache_root = Path(args.cache_dir)
    elif args.out:
        cache_root = Path(args.out) / "cache"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="glotpool-eval-")
        cache_root = Path(tmp.name)
    texts = data.texts()
    caches, cache_seconds = {}, {}
    try:
        for key, bb in backbones.items():
            wanted = list(texts)
            if any(s.backbone_key == key and s.prompt for s in systems):
                wanted += zs.prompted(texts, zs.PROMPTEOL)
            short = Path(str(bb.config.name_or_path)).name
            digest = hashlib.sha256((key + "\0" + "\0".join(wanted)).encode()).hexdigest()[:12]
            t0 = time.perf_counter()
            caches[key] = build_cache(bb, wanted, cache_root / f"{short}-{digest}", batch_size=args.batch_size,
                                      show_progress=not args.quiet, shard_tokens=50_000)  # resumable in small steps
            cache_seconds[short] = round(time.perf_counter() - t0, 1)
        results = []
        for system in systems:
            label, pooler = system.label, system.pooler
            embed = zs.cache_embedder(caches[system.backbone_key], pooler, system.prompt, **system.selection)
            t0 = time.perf_counter()
            details: dict = {}
            scores = zs.evaluate_embedder(embed, data, details)
            if not args.no_mteb:
                from glotpool.integrations.mteb import local_mteb_scores

                scores.update(local_mteb_scores(embed, pooler.out_dim, data.probe_train, data.probe_test,
                                                data.pairs, 0.0, 2.0))
            results.append({"system": label, "kind": system.kind, "scores": scores, "details": details,
                            "eval_seconds": round(time.perf_counter() - t0, 1)})
            if not args.quiet:
                print(f"[evaluate] {label}: " + " ".join(f"{k} {v:.4f}" for k, v in scores.items()), file=sys.stderr)
    finally:
        if tmp is not None:
            tmp.cleanup()
    metrics = list(zs.METRICS) + ([] if args.no_mteb else ["mteb_classification_acc", "mteb_sts_spearman"])
    sizes = ", ".join(f"{k} {v}" for k, v in data.sizes.items())
    groups = zs.group_seeds(results)  # runs named *-s0, *-s1, ... -> one row, mean ± std over seeds
    tests = zs.paired_tests(groups)
    table = zs.format_table(groups, metrics)
    if tests:
        table += ("\nPaired bootstrap (10,000 resamples of the shared test examples; seed-averaged per-example "
                  "reciprocal rank / correctness), trained vs untrained:\n\n" + zs.format_tests(tests))
    print(f"# zero-shot ({sizes}); scores x100, mean ± std over seeds where a row has several\n\n{table}")
    if args.out:
        from glotpool.io_utils import atomic_write_json, atomic_write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for r in results:
            r["details"] = {k: np.asarray(v).tolist() for k, v in r["details"].items()}
        summary = [{k: g[k] for k in ("system", "kind", "runs", "scores")} for g in groups]
        atomic_write_json(out / "results.json", {"sizes": data.sizes, "cache_seconds": cache_seconds,
                                                 "results": results, "summary": summary, "paired_tests": tests})
        atomic_write_text(out / "results.md", f"# Zero-shot evaluation\n\nSubsets: {sizes}. Scores x100.\n\n{table}")
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}", file=sys.stderr)
    return 0
