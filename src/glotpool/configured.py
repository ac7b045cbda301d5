"""The configured-module base of poolers and task heads: a config dataclass, option checking, save / load.

A configured module is ``Config`` (a dataclass) + parameters. On disk it is one folder::

    <config file>.json       {"<kind>": name, "config": {...}, "format_version", "glotpool_version"}
    <weights file>.safetensors

Both files are written atomically. The config records the sha256 of the weights file (``weights_sha256``) and the
weights file's safetensors metadata records the full config (``glotpool_config``), so loading refuses, with a
message naming the file and the fix: a corrupt / truncated weights file, weights saved under another config (a
hand-edited or swapped config.json), missing / unexpected / wrongly shaped tensors.

Every config value is checked by type (from the dataclass annotation) and range when a module is built or loaded
(:func:`check_config`): ``tau="0.6"``, ``tau=nan``, ``hidden_dim=0``, ``center="yes"`` are refused.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from glotpool.io_utils import atomic_path, atomic_write_json, sha256_file

FORMAT_VERSION = 1
CONFIG_METADATA_KEY = "glotpool_config"

# Default ranges by field name (a Config may override with a class attribute RANGES = {name: (lo, hi, lo_open)}).
# Every int field is >= 1 unless named here; every float must be finite.
_DEFAULT_RANGES = {
    "num_layers": (0, None, False),
    "dropout": (0.0, 1.0, False),
    "cosent_scale": (0.0, None, True),
}


def _type_name(hint) -> str:
    if hint is type(None):
        return "None"
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def _coerce(value, hint):
    """``value`` as type ``hint`` (an int is accepted for a float), or raise TypeError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(hint):
            try:
                return _coerce(value, a)
            except TypeError:
                pass
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (item,) = typing.get_args(hint) or (typing.Any,)
        return [_coerce(v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    return value


def check_config(config_cls: type, fields: dict, where: str) -> dict:
    """``fields`` type-checked (and ints for floats converted) against ``config_cls``'s annotations, and
    range-checked; ValueError naming the option, the value and what is allowed."""
    hints = typing.get_type_hints(config_cls)
    ranges = {**_DEFAULT_RANGES, **getattr(config_cls, "RANGES", {})}
    out = {}
    for name, value in fields.items():
        hint = hints.get(name)
        if hint is None:
            out[name] = value
            continue
        try:
            v = _coerce(value, hint)
        except TypeError:
            raise ValueError(f"{where}: option {name} must be {_type_name(hint)}, got {value!r} "
                             f"({type(value).__name__})") from None
        scalars = v if isinstance(v, list) else [v]
        for x in scalars:
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"{where}: option {name} must be a finite number, got {value!r}")
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            lo, hi, lo_open = ranges.get(name, (1, None, False) if isinstance(x, int) else (None, None, False))
            if (lo is not None and (x <= lo if lo_open else x < lo)) or (hi is not None and x > hi):
                allowed = (f"{'>' if lo_open else '>='} {lo}" if hi is None else
                           f"in {'(' if lo_open else '['}{lo}, {hi}]" if lo is not None else f"<= {hi}")
                raise ValueError(f"{where}: option {name} must be {allowed}, got {value!r}")
        out[name] = v
    return out


class ConfiguredModule(nn.Module):
    """Base: subclasses set ``Config`` (a dataclass) and ``kind`` (``"pooler"``, ``"head"``: used in messages)."""

    Config: ClassVar[type]
    kind: ClassVar[str] = "module"

    def _configure(self, name: str, **fields) -> None:
        """``self.config = Config(**fields)``, refusing options the config does not have (listing the valid ones)."""
        names = [f.name for f in dataclasses.fields(self.Config)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            valid = ", ".join(n for n in names if n not in ("in_dim", "dim")) or "(none)"
            raise ValueError(f"unknown option(s) {unknown} for {self.kind} {name!r}; valid options: {valid}")
        self.config = self.Config(**check_config(self.Config, fields, f"{self.kind} {name!r}"))

    def _save(self, path: str | os.PathLike, config_name: str, weights_name: str, record: dict,
              weights_metadata: dict | None = None) -> None:
        from safetensors.torch import save_file

        from glotpool import __version__

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        config = dataclasses.asdict(self.config)
        metadata = {**(weights_metadata or {}),
                    CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True, default=str)}
        with atomic_path(path / weights_name) as tmp:
            save_file(state, str(tmp), metadata=metadata)
        atomic_write_json(path / config_name, {**record, "config": config,
                                               "weights_sha256": {weights_name: sha256_file(path / weights_name)},
                                               "format_version": FORMAT_VERSION, "glotpool_version": __version__})

    @staticmethod
    def _read_config(path: str | os.PathLike, config_name: str, kind: str, required: tuple[str, ...],
                     how_to_save: str) -> dict:
        cfg_file = Path(path) / config_name
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no {kind} at {path}: {config_name} is missing (save one with {how_to_save})")
        try:
            meta = json.loads(cfg_file.read_text())
        except ValueError as e:
            raise ValueError(f"{cfg_file} is not valid JSON ({e}); re-save the {kind}") from None
        if not isinstance(meta, dict) or any(k not in meta for k in required):
            raise ValueError(f"{cfg_file} is not a glotpool {kind} config (keys {list(required)} expected)")
        if not isinstance(meta["config"], dict):
            raise ValueError(f"{cfg_file}: 'config' must be a JSON object; re-save the {kind}")
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"{cfg_file} has format_version {meta['format_version']}, newer than this glotpool "
                             f"understands ({FORMAT_VERSION}); upgrade glotpool")
        meta["_config_file"] = str(cfg_file)
        return meta

    @staticmethod
    def _verify_weights(path: str | os.PathLike, meta: dict, weights_name: str) -> Path:
        """The weights file of a folder, checked against the sha256 its config recorded (before any parsing)."""
        weights = Path(path) / weights_name
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing next to its config; re-save the model or copy the file")
        recorded = (meta.get("weights_sha256") or {}).get(weights_name)
        if recorded is not None and sha256_file(weights) != recorded:
            raise ValueError(f"{weights} is corrupt or was replaced: its sha256 does not match the one recorded in "
                             f"{Path(path) / Path(meta.get('_config_file', 'config')).name}. Re-copy the folder "
                             f"from its source or retrain (glotpool train)")
        return weights

    def _load_weights(self, weights: Path, map_location: str | torch.device = "cpu", meta: dict | None = None) -> None:
        """Load ``weights`` into this module; ``meta`` (the folder's config record) supplies the recorded sha256."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        weights = Path(weights)
        if meta is not None:
            self._verify_weights(weights.parent, meta, weights.name)
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing next to its config; re-save the model or copy the file")
        fix = "re-copy the model folder from its source or retrain (glotpool train)"
        try:
            with safe_open(str(weights), framework="pt") as f:
                file_meta = f.metadata() or {}
            state = load_file(str(weights), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types for truncated / garbled files
            raise ValueError(f"{weights} is not a readable safetensors file ({type(e).__name__}: {e}); {fix}") from None
        saved = file_meta.get(CONFIG_METADATA_KEY)
        if saved is not None:
            current = json.loads(json.dumps(dataclasses.asdict(self.config), sort_keys=True, default=str))
            # An option newer than the file (added to the config class after it was saved) counts as its default,
            # so folders saved by an older glotpool keep loading when the option is at that default.
            defaults = {f.name: current[f.name] for f in dataclasses.fields(self.config)
                        if f.default is not dataclasses.MISSING and current[f.name] == f.default}
            trained = {**defaults, **json.loads(saved)}
            diffs = [f"{k}: weights trained with {trained.get(k)!r}, config says {current.get(k)!r}"
                     for k in sorted(set(trained) | set(current)) if trained.get(k) != current.get(k)]
            if diffs:
                raise ValueError(f"{weights} was saved under another config than the one next to it: "
                                 + "; ".join(diffs[:6]) + f". Restore the original config file or {fix}")
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        bad_shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                      if k in own and tuple(own[k].shape) != tuple(v.shape)]
        if missing or unexpected or bad_shapes:
            raise ValueError(f"{weights} does not match its config: missing {list(missing)}, unexpected "
                             f"{list(unexpected)}, shape mismatches {bad_shapes}; {fix}")
        self.load_state_dict(state, strict=True)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Save into a temporary folder and upload it as Hub repo ``repo_id`` -> commit URL.

        ``kwargs``: :func:`glotpool.hub.push_folder`'s (``private``, ``revision``, ``token``, ``commit_message``,
        ``api``). Load it back with ``from_pretrained(repo_id)``.
        """
        from glotpool.hub import push_saved

        return push_saved(self.save_pretrained, repo_id, **kwargs)
