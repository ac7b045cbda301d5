"""One training run = (pooler spec, seed, budget) on a cache; the unit that `compare`, `stress` and `sweep` repeat.

Runs are resumable at run granularity: each finished run writes ``run.json`` (atomically) and a rerun with the same
settings loads it instead of training again, so an interrupted sweep continues where it stopped. The settings are
everything that changes the result: pooler spec, seed, training config, head options, the cache key (backbone +
texts) and a fingerprint of the data (:func:`data_fingerprint`: every split's texts, labels / scores, label
names). Any difference reruns the run and says why; it is never reused.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from glotpool.states.cache import TokenCache
from glotpool.io_utils import atomic_write_json
from glotpool.training.trainer import (DEFAULT_STATES, CachedSplits, StateSelection, TrainConfig, TrainResult,
                                       seed_everything, train_pooler)

STATE_KEYS = ("layer", "mix", "tokens")  # spec options that choose the states (StateSelection), not the pooler


def parse_value(v: str):
    """A CLI option value: true/false, none/null, int, float, else the string."""
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_states(layer=None, mix=None, tokens: str = "all") -> StateSelection:
    """The text form's state options -> a :class:`StateSelection`: ``layer=-8`` (one hidden layer), ``mix=all`` or
    ``mix=4+8+12`` (a learned mix of the cache's layers / of these), ``tokens=text`` (the text span only)."""
    if layer is not None and mix is not None:
        raise ValueError("give layer=N (one layer) or mix=... (a layer mix), not both")
    if mix is not None:
        if mix != "all":
            try:
                mix = tuple(int(x) for x in str(mix).split("+"))
            except ValueError:
                raise ValueError(f"mix={mix!r}: write mix=all or hidden-layer indices joined by '+', e.g. "
                                 f"mix=4+8+12") from None
            if len(mix) < 2:
                raise ValueError(f"mix={mix[0]} is one layer: write layer={mix[0]}, or two or more for a mix")
        layer = mix
    elif layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise ValueError(f"layer={layer!r}: a hidden-layer index is an int (0 = embeddings, -1 = last)")
    return StateSelection(layer, tokens)


def states_text(states: StateSelection) -> str:
    """The text form's options of a selection ('' for the default): the inverse of :func:`parse_states`."""
    parts = []
    if states.mixed:
        parts.append("mix=" + ("all" if states.layers == "all" else "+".join(map(str, states.layers))))
    elif states.layers is not None:
        parts.append(f"layer={states.layers}")
    if states.tokens != "all":
        parts.append(f"tokens={states.tokens}")
    return ",".join(parts)


@dataclass(frozen=True)
class PoolerSpec:
    """A pooler to run: registry ``name``, constructor ``options``, a display ``label`` and the ``states`` it reads.

    Text form (CLI): ``NAME`` or ``NAME:key=value,key=value`` or ``LABEL=NAME:key=value``, e.g.
    ``glot``, ``glot:conv=gcn,tau=0.4``, ``glot-knn=glot:graph=knn,k=8``. The options ``layer=N``, ``mix=all`` /
    ``mix=4+8+12`` and ``tokens=text`` choose the cached states (:func:`parse_states`), e.g. ``glot:layer=-8``,
    ``glot:mix=all,graph_layer=-1``, ``mean:tokens=text``; a mix builds the pooler with ``layer_mix=K``.
    """

    name: str
    options: tuple = ()
    label: str = ""
    states: StateSelection = DEFAULT_STATES

    @classmethod
    def parse(cls, text: str) -> "PoolerSpec":
        text = text.strip()
        label = ""
        head = text.split(":", 1)[0]
        if "=" in head:
            label, text = text.split("=", 1)
        name, _, rest = text.partition(":")
        opts, state_opts = [], {}
        for item in filter(None, rest.split(",")):
            if "=" not in item:
                raise ValueError(f"bad pooler option {item!r} in {text!r}; write key=value, e.g. glot:tau=0.4")
            k, v = item.split("=", 1)
            k, v = k.strip(), parse_value(v.strip())
            if k in STATE_KEYS:
                state_opts[k] = v
            else:
                opts.append((k, v))
        from glotpool.pooling.base import check_pooler_options

        try:  # types and ranges now, before any backbone loads or cache is built
            states = parse_states(**state_opts)
            spec = cls(name.strip(), tuple(opts), label.strip() or (text.strip() if opts or state_opts
                                                                      else name.strip()), states)
            check_pooler_options(spec.name, **spec.kwargs)
        except ValueError as e:
            raise ValueError(f"--pooler {text!r}: {e}") from None
        return spec

    @classmethod
    def of(cls, name: str, label: str = "", states: StateSelection = DEFAULT_STATES, **options) -> "PoolerSpec":
        return cls(name, tuple(sorted(options.items())), label or name, states)

    @property
    def kwargs(self) -> dict:
        """The pooler's constructor options (without the state selection and the data-dependent ``layer_mix``)."""
        return dict(self.options)

    def pooler_kwargs(self, cache: TokenCache) -> dict:
        """:attr:`kwargs` as the pooler is built on ``cache``: plus ``layer_mix=K`` when the spec mixes K layers."""
        k = self.states.mix_size(cache)
        return {**self.kwargs, "layer_mix": k} if k else self.kwargs

    def resolved(self, cache: TokenCache, rows: np.ndarray, sample: int = 256) -> "PoolerSpec":
        """Resolve data-dependent options: with ``target_density=x`` (GLOT) and no explicit ``tau``, ``tau`` becomes
        the threshold that gives density ``x`` on up to ``sample`` of the given cache rows (the train split; never
        the test split), through :meth:`GLOTPooling.calibrate_tau`."""
        opts = self.kwargs
        if opts.get("target_density") is None or "tau" in opts:
            return self
        from glotpool.pooling import build_pooler

        rng = np.random.default_rng(0)
        pick = rng.choice(rows, size=min(sample, len(rows)), replace=False)
        h, mask = self.states.read(cache, pick)
        opts["tau"] = build_pooler(self.name, in_dim=cache.dim, **self.pooler_kwargs(cache)).calibrate_tau(h, mask)
        return replace(self, options=tuple(sorted(opts.items())))

    def with_options(self, **options) -> "PoolerSpec":
        merged = {**dict(options), **self.kwargs}  # the spec's own options win over defaults
        return replace(self, options=tuple(sorted(merged.items())))


@dataclass
class RunRecord:
    label: str
    pooler: str
    options: dict
    seed: int
    train_config: dict
    metric: str
    dev: dict
    test: dict | None
    best_epoch: int
    seconds_per_epoch: float
    train_seconds: float
    trainable_parameters: int
    extra: dict = field(default_factory=dict)
    test_predictions: list | None = None  # per test row: what the paired significance tests compare
    states: dict | None = None  # StateSelection.as_dict() when the run read other than the cache's plain states

    @property
    def test_score(self) -> float:
        return float((self.test or {}).get(self.metric, math.nan))


def build_model(spec: PoolerSpec, in_dim: int, data: CachedSplits, head_options: dict | None = None,
                cache: TokenCache | None = None):
    """``(pooler, head)`` for ``spec`` on states of width ``in_dim`` and ``data``'s task (classifier heads get the
    task's number of labels). The one place a runner turns a spec into modules: `run_one`, `dist train`. With
    ``cache``, a layer-mix spec gets ``layer_mix=K`` (:meth:`PoolerSpec.pooler_kwargs`)."""
    from glotpool.pooling import build_pooler
    from glotpool.training.heads import build_head, head_class

    pooler = build_pooler(spec.name, in_dim=in_dim, **(spec.pooler_kwargs(cache) if cache is not None
                                                       else spec.kwargs))
    head_opts = dict(head_options or {})
    if head_class(data.task_type).is_classification:
        head_opts.setdefault("num_labels", data.num_labels)
    return pooler, build_head(data.task_type, pooler.out_dim, **head_opts)


def data_fingerprint(data: CachedSplits) -> str:
    """sha256 of what a run trains and is scored on: task type, label names, score range and, per split, its
    cache rows (= its texts, given the cache key) and targets. Changes with any flipped / renamed label or any
    text moved between splits."""
    h = hashlib.sha256()
    h.update(json.dumps({"task_type": data.task_type, "label_names": data.label_names,
                         "score_range": list(data.score_range) if data.score_range else None}).encode())
    for name in sorted(data.splits):
        s = data.splits[name]
        h.update(f"\x00split:{name}:{len(s)}".encode())
        parts = [("idx1", s.idx1), ("idx2", s.idx2), ("targets", s.targets)]
        parts += [(k, a) for k, a in (("idx3", getattr(s, "idx3", None)), ("groups", getattr(s, "groups", None)))
                  if a is not None]  # only when present: older runs keep their fingerprint
        for part, arr in parts:
            h.update(f"\x00{part}:".encode())
            if arr is not None:
                a = np.ascontiguousarray(arr)
                h.update(str(a.dtype).encode() + a.tobytes())
    return h.hexdigest()


def _settings_diff(saved: dict, settings: dict) -> list[str]:
    keys = sorted(set(saved) | set(settings))
    names = {"data": "the data (texts, labels or splits)", "cache_key": "the cache (backbone or texts)"}
    return [names.get(k, k) for k in keys if saved.get(k) != settings.get(k)]


def run_settings(spec: PoolerSpec, cache_key: str, data: CachedSplits, cfg: TrainConfig,
                 head_options: dict | None = None) -> dict:
    """Everything that changes a run's result: its resume key (``run.json``'s ``settings``). A spec reading the
    cache's plain states has no ``states`` entry, so runs from before state selections keep their key."""
    settings = {"label": spec.label, "pooler": spec.name, "options": spec.kwargs, "seed": cfg.seed,
                "train_config": {k: v for k, v in asdict(cfg).items() if k != "show_progress"},
                "cache_key": cache_key, "head_options": head_options or {}, "data": data_fingerprint(data)}
    if not spec.states.is_default:
        settings["states"] = spec.states.as_dict()
    return settings


LEARNED_MARGIN = 0.01  # a run learned nothing if no epoch's train loss fell 1 % below the constant prediction's


def constant_prediction_loss(head, targets: np.ndarray | None) -> float | None:
    """The loss ``head`` gives the best input-independent prediction on ``targets``. With class masses
    m_c ∝ w_c n_c (w_c the head's class weight, 1 without; n_c the class count), the weighted mean cross-entropy
    Σ_i w_{y_i} (−log p_{y_i}) / Σ_i w_{y_i} is smallest at p = m, where it is the entropy H(m) (ln C for balanced
    classes). A classifier whose train loss never falls below it learned nothing from its inputs. None without
    classes."""
    if not head.is_classification or targets is None or len(targets) == 0:
        return None
    mass = np.bincount(np.asarray(targets), minlength=head.config.num_labels).astype(np.float64)
    if head.class_weights is not None:
        mass = mass * head.class_weights.detach().cpu().double().numpy()
    m = mass[mass > 0] / mass.sum()
    return float(-(m * np.log(m)).sum())


def learned_anything(rec) -> bool | None:
    """False when a run's train loss never fell ``LEARNED_MARGIN`` below the constant prediction's (it collapsed
    to the class prior: on SmolLM2 / SNLI one GAT-GLOT seed did so at an lr where two others trained); None when
    its record does not say (not a classifier, or a run from before the check). ``rec``: a RunRecord or its dict."""
    extra = rec.get("extra") if isinstance(rec, dict) else getattr(rec, "extra", None)
    loss = (extra or {}).get("train_loss")
    if not loss or loss.get("constant") is None or loss.get("min") is None:
        return None
    return loss["min"] < (1 - LEARNED_MARGIN) * loss["constant"]


def run_one(spec: PoolerSpec, cache: TokenCache, data: CachedSplits, cfg: TrainConfig, *, seed: int,
            run_dir: str | Path | None = None, head_options: dict | None = None, save_model: bool = False,
            extra: dict | None = None) -> RunRecord:
    """Train ``spec`` with ``seed`` (pooler init, batch order) and return its record; reuse ``run_dir/run.json``.

    ``save_model=True`` also keeps the best weights in ``run_dir/best/`` (``pooler/``, ``head/``). A layer-mix
    spec's record holds the learned mix in ``extra["layer_mix"]`` (``{"layers", "weights", "gamma"}``).
    """
    cfg = replace(cfg, seed=seed)
    spec = spec.resolved(cache, data["train"].idx1)
    settings = run_settings(spec, cache.key, data, cfg, head_options)
    if run_dir is not None:
        done = Path(run_dir) / "run.json"
        if done.is_file():
            try:
                saved = json.loads(done.read_text())
            except ValueError:
                saved = {}
            wanted = json.loads(json.dumps(settings))
            old = saved.get("settings") if isinstance(saved, dict) else None
            if old == wanted and (not save_model or (Path(run_dir) / "best" / "pooler").is_dir()):
                return RunRecord(**saved["record"])
            why = ", ".join(_settings_diff(old, wanted)) if isinstance(old, dict) else "unreadable run.json"
            print(f"note: {run_dir}: rerunning {spec.label} seed {seed}: the earlier run used other settings "
                  f"({why or 'its saved model is missing'})", file=sys.stderr)
            done.unlink()
    seed_everything(seed)
    pooler, head = build_model(spec, cache.dim, data, head_options, cache=cache)
    result: TrainResult = train_pooler(pooler, head, cache, data, cfg, states=spec.states,
                                       out_dir=run_dir if (save_model and run_dir is not None) else None)
    extra = dict(extra or {})
    constant = constant_prediction_loss(head, data["train"].targets)
    losses = [h["loss"] for h in result.history if not math.isnan(h["loss"])]
    if constant is not None and losses:  # what learned_anything() reads
        extra["train_loss"] = {"min": min(losses), "constant": constant}
    if spec.states.mixed:
        extra["layer_mix"] = {"layers": mixed_layers(spec.states, cache), **(pooler.layer_mix_weights() or {})}
    rec = RunRecord(label=spec.label, pooler=spec.name, options=spec.kwargs, seed=seed,
                    train_config=settings["train_config"], metric=result.metric, dev=result.dev, test=result.test,
                    best_epoch=result.best_epoch, seconds_per_epoch=result.seconds_per_epoch,
                    train_seconds=result.train_seconds, trainable_parameters=result.trainable_parameters,
                    extra=extra, test_predictions=result.test_predictions,
                    states=None if spec.states.is_default else spec.states.as_dict())
    if run_dir is not None:
        atomic_write_json(Path(run_dir) / "run.json", {"settings": settings, "record": asdict(rec)})
    return rec


def mixed_layers(states: StateSelection, cache: TokenCache) -> list[int]:
    """The hidden-layer indices a mixed selection reads from ``cache``, in its K order (what mix weights refer to)."""
    from glotpool.states.selection import absolute_layers

    return list(cache.layers) if states.layers == "all" else list(absolute_layers(states.layers, cache.num_layers))


def mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt_mean_std(values, scale: float = 100.0, digits: int = 1) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "n/a"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"
