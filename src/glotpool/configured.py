"""The configured-module base of poolers and task heads: a config dataclass, option checking, save / load.

A configured module is ``Config`` (a dataclass) + parameters. On disk it is one folder::

    <config file>.json       {"<kind>": name, "config": {...}, "format_version", "glotpool_version"}
    <weights file>.safetensors

Both files are written atomically; loading refuses weights that do not match the config (missing / unexpected
tensors) with a message naming the file.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from glotpool.io_utils import atomic_path, atomic_write_json

FORMAT_VERSION = 1


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
        self.config = self.Config(**fields)

    def _save(self, path: str | os.PathLike, config_name: str, weights_name: str, record: dict,
              weights_metadata: dict | None = None) -> None:
        from safetensors.torch import save_file

        from glotpool import __version__

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path / weights_name) as tmp:
            save_file(state, str(tmp), metadata=weights_metadata)
        atomic_write_json(path / config_name, {**record, "config": dataclasses.asdict(self.config),
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
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"{cfg_file} has format_version {meta['format_version']}, newer than this glotpool "
                             f"understands ({FORMAT_VERSION}); upgrade glotpool")
        return meta

    def _load_weights(self, weights: Path, map_location: str | torch.device = "cpu") -> None:
        from safetensors.torch import load_file

        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing next to its config")
        state = load_file(str(weights), device=str(map_location))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights} does not match its config: missing {missing}, unexpected {unexpected}")

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Save into a temporary folder and upload it as Hub repo ``repo_id`` -> commit URL.

        ``kwargs``: :func:`glotpool.hub.push_folder`'s (``private``, ``revision``, ``token``, ``commit_message``,
        ``api``). Load it back with ``from_pretrained(repo_id)``.
        """
        from glotpool.hub import push_saved

        return push_saved(self.save_pretrained, repo_id, **kwargs)
