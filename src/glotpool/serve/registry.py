"""Which models a server holds: ``NAME=PATH`` specs -> loaded :class:`~glotpool.encoder.Encoder` objects.

``PATH`` is an Encoder folder (``glotpool train ... --out X`` writes ``X/model``; it holds ``encoder.json``) or
``BACKBONE:POOLER`` with a parameter-free built-in pooler (``minilm:mean``, ``minilm:cls``, ``/models/bert:max``), so
plain mean pooling can be served too. Each backbone is loaded once: two models that name the same backbone with
the same fingerprint (weights hash, layer, max_length, dtype, tokenizer) get the same :class:`Backbone` object.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from glotpool.encoder import CONFIG_NAME, Encoder
from glotpool.pooling import available_poolers, build_pooler
from glotpool.states.backbone import Backbone, BackboneConfig, load_backbone

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def _same_name(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return a == b


@dataclass(frozen=True)
class ModelSpec:
    name: str                  # the id clients send as "model"
    path: str                  # what was given after NAME=
    kind: str                  # "encoder" (a folder) | "builtin" (BACKBONE:POOLER)
    backbone: str | None = None
    pooler: str | None = None


def parse_model_spec(text: str) -> ModelSpec:
    """``NAME=PATH`` -> :class:`ModelSpec` (ValueError with the accepted forms otherwise)."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise ValueError(f"--model {text!r}: expected NAME=PATH, e.g. --model glot=models/pl/model or "
                         f"--model minilm-mean=minilm:mean")
    if not _NAME.match(name):
        raise ValueError(f"--model {text!r}: model name {name!r} may hold only letters, digits and . _ : / - "
                         f"(at most 128 characters)")
    if (Path(path).expanduser() / CONFIG_NAME).is_file():
        return ModelSpec(name, path, "encoder")
    if ":" in path:
        backbone, _, pooler = path.rpartition(":")
        if pooler not in available_poolers():
            raise ValueError(f"--model {text!r}: unknown pooler {pooler!r}; valid: {', '.join(available_poolers())}")
        if build_pooler(pooler, in_dim=8).num_trainable_parameters():
            raise ValueError(f"--model {text!r}: {pooler!r} is a learned pooler; an untrained one gives random "
                             f"vectors. Train it (glotpool train --pooler {pooler} --out X) and serve X/model, or use "
                             f"a parameter-free pooler (mean, max, cls, last)")
        return ModelSpec(name, path, "builtin", backbone=backbone, pooler=pooler)
    if Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"--model {text!r}: {path} has no {CONFIG_NAME}: not an encoder folder (glotpool "
                                f"train --out X writes the encoder to X/model)")
    raise FileNotFoundError(f"--model {text!r}: {path} is neither an encoder folder nor BACKBONE:POOLER "
                            f"(e.g. minilm:mean)")


class ModelRegistry:
    """Loads every spec once, sharing backbones; ``models[name] -> Encoder``; ``backbones`` lists the loaded ones.

    An Encoder folder reuses an already loaded backbone whose fingerprint equals the one stored in its
    ``encoder.json`` (weights hash, layer, max_length, dtype, tokenizer, ...); otherwise ``Encoder.from_pretrained``
    finds and checks its backbone as ``glotpool encode`` does, and later models may share that one.
    """

    def __init__(self, device: str = "auto", check_backbone: bool = True):
        self.device, self.check_backbone = device, check_backbone
        self.models: dict[str, Encoder] = {}
        self.specs: dict[str, ModelSpec] = {}
        self.backbones: list[Backbone] = []

    def _shared(self, fingerprint: dict | None) -> Backbone | None:
        if not fingerprint:
            return None
        for bb in self.backbones:
            try:
                Encoder.verify_backbone(fingerprint, bb)
            except ValueError:
                continue
            return bb
        return None

    def _builtin_backbone(self, name: str) -> Backbone:
        default = BackboneConfig(name_or_path=name)
        for bb in self.backbones:
            c = bb.config
            if (_same_name(c.name_or_path, name) and (c.layer, c.max_length, c.dtype, c.padding_side, c.gguf_file,
                                                      c.revision) ==
                    (default.layer, default.max_length, default.dtype, default.padding_side, default.gguf_file,
                     default.revision)):
                return bb
        bb = load_backbone(name, device=self.device)
        return self._keep(bb)

    def _keep(self, bb: Backbone) -> Backbone:
        if all(b is not bb for b in self.backbones):
            self.backbones.append(bb)
        return bb

    def add(self, spec: ModelSpec) -> Encoder:
        if spec.name in self.models:
            raise ValueError(f"model name {spec.name!r} is given twice")
        if spec.kind == "encoder":
            path = Path(spec.path).expanduser()
            ref = json.loads((path / CONFIG_NAME).read_text()).get("backbone") or {}
            bb = self._shared(ref.get("fingerprint"))
            enc = Encoder.from_pretrained(path, backbone=bb, device=self.device, check_backbone=self.check_backbone)
            self._keep(enc.backbone)
        else:
            bb = self._builtin_backbone(spec.backbone)
            enc = Encoder(bb, build_pooler(spec.pooler, in_dim=bb.dim))
        self.models[spec.name] = enc
        self.specs[spec.name] = spec
        return enc

    def describe(self, name: str) -> dict:
        """What ``GET /v1/models`` shows about one model (beyond OpenAI's id/object/created/owned_by)."""
        enc, spec = self.models[name], self.specs[name]
        head = enc.head
        return {"dim": enc.dim, "pooler": enc.pooler.name, "backbone": enc.backbone.config.name_or_path,
                "max_input_tokens": enc.backbone.config.max_length, "task_type": enc.task_type,
                "classifier": bool(head is not None and head.is_classification),
                "pair": bool(head is not None and head.is_pair), "labels": enc.label_names, "source": spec.path}


__all__ = ["ModelRegistry", "ModelSpec", "parse_model_spec"]
