"""Use a trained pooler: one :class:`Encoder` = frozen backbone + pooler (+ task head), saved and loaded as a folder.

    enc = Encoder.from_run("runs/glot", load_backbone("minilm"))     # from train_pooler's out_dir (best/)
    enc.save_pretrained("models/glot-pang-lee")
    enc = Encoder.from_pretrained("models/glot-pang-lee")            # loads (and checks) the backbone it names
    Z = enc.encode(["a fine film .", "dull ."])                      # [N, dim] float32 numpy
    enc.predict(["a fine film ."])                                   # ["positive"] (classifier heads)

Folder layout (written atomically as a whole)::

    encoder.json   backbone reference (name_or_path / preset, revision, gguf_file, layer / layers, prompt,
                   max_length, dtype, padding side, hidden size, weights sha256 + the backbone's full fingerprint),
                   the states selection the pooler was trained on ("states": {"layers", "tokens"}), task metadata
    labels.json    {"task_type", "label_names", "score_range"} (the same file train_pooler writes in best/)
    pooler/        Pooler.save_pretrained
    head/          TaskHead.save_pretrained (only when there is a head)

A pooler is only meaningful on the exact states it was trained on, so :meth:`Encoder.from_pretrained` refuses a
backbone whose fingerprint differs (weights hash, hidden size, layer, max_length, dtype, tokenizer, ...) with a
ValueError naming every difference; ``check_backbone=False`` overrides at your own risk.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from glotpool.states.backbone import DTYPES, PRESETS, Backbone, length_sorted_batches, load_backbone, resolve_dtype
from glotpool.states.selection import check_tokens, layer_positions, select_states
from glotpool.io_utils import atomic_dir, atomic_write_json, dict_diff, rows_str
from glotpool.pooling import Pooler, load_pooler
from glotpool.training.heads import TaskHead
from glotpool.training.trainer import autocast as pooler_autocast

FORMAT = "glotpool-encoder"
FORMAT_VERSION = 1
CONFIG_NAME = "encoder.json"
_IGNORED_FINGERPRINT_KEYS = {"model"}  # a display name ("minilm", "local:<folder>"); the weights hash decides


def _as_texts(texts, what: str = "texts") -> list[str]:
    """list of non-empty strings, or ValueError naming the first bad indices (0-based)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{what} must be strings; index(es) {rows_str(bad)} hold {type(texts[bad[0]]).__name__}")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"{what} at index(es) {rows_str(empty)} are empty (or whitespace only): an empty text has no "
                         f"tokens to pool; drop them or replace them before encoding")
    return texts


def _as_dtype(dtype, device="cpu") -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":  # bf16 where the device computes it natively, else fp32 (states.backbone.resolve_dtype)
        return DTYPES[resolve_dtype("auto", device)]
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto', one of {sorted(DTYPES)} or a torch dtype, got {dtype!r}")
    return DTYPES[dtype]


class Encoder:
    """Frozen backbone + trained pooler (+ optional task head): texts -> vectors / labels / similarities.

    ``encode(texts)`` equals ``pooler(*backbone.encode(texts))`` (up to float noise from batch padding), computed in
    length-sorted batches and returned in input order. With a backbone ``prompt`` / ``layers``, the pooler gets the
    states selection it was trained on: ``layers`` and ``tokens`` are what training passed to
    :meth:`TokenCache.batch` (``layers``: None = every layer the backbone returns, an int hidden_states index, or a
    tuple of them; ``tokens``: "all" or "text"), applied by the same :func:`~glotpool.states.selection.select_states`.
    """

    def __init__(self, backbone: Backbone, pooler: Pooler, head: TaskHead | None = None,
                 label_names: list[str] | None = None, task_type: str | None = None, score_range=None,
                 training: dict | None = None, *, layers=None, tokens: str = "all"):
        if pooler.in_dim != backbone.dim:
            raise ValueError(f"the pooler expects states of size {pooler.in_dim} but backbone "
                             f"{backbone.config.name_or_path!r} has hidden size {backbone.dim}; use the backbone "
                             f"the pooler was trained on")
        if head is not None:
            head_dim = head.config.dim
            if head_dim != pooler.out_dim:
                raise ValueError(f"the head expects vectors of size {head_dim} but the pooler gives {pooler.out_dim}")
            task_type = task_type or head.task_type
            if task_type != head.task_type:
                raise ValueError(f"task_type {task_type!r} does not match the head's {head.task_type!r}")
            n = getattr(head.config, "num_labels", None)
            if label_names is not None and n is not None and len(label_names) != n:
                raise ValueError(f"{len(label_names)} label names for a head with {n} classes")
        layer_positions(backbone.layers, layers, backbone.num_layers)  # fail now for a layer the backbone lacks
        self.layers = _json_layers(layers)  # as encoder.json holds it
        self.tokens = check_tokens(tokens)
        self.backbone = backbone
        self.pooler = pooler.to(backbone.device).eval()
        self.head = head.to(backbone.device).eval() if head is not None else None
        self.label_names = list(label_names) if label_names is not None else None
        self.task_type = task_type
        self.score_range = tuple(score_range) if score_range is not None else None
        # how it was trained (pooler spec, task, splits, budget, seed, dev / test metrics): saved in encoder.json and
        # rendered in the README.md model card; from_run fills it from the run, `glotpool train` adds the task
        self.training = dict(training or {})
        self.model_id: str | None = None  # what the card's usage snippet loads (push_to_hub sets the repo id)
        # the pooler's (and head's) precision at inference, as TrainConfig.precision in training (one autocast):
        # "auto" = bf16 autocast where the device computes bf16 natively, "fp32" / "bf16" to force one
        self.precision = "auto"

    @property
    def dim(self) -> int:
        return self.pooler.out_dim

    def __repr__(self) -> str:
        return (f"Encoder(backbone={self.backbone.config.name_or_path!r}, pooler={self.pooler.name!r}, dim={self.dim}, "
                f"task_type={self.task_type!r}, labels={self.label_names})")

    # --- persistence ---------------------------------------------------------------------------------------------
    def backbone_reference(self) -> dict:
        """What ``from_pretrained`` needs to find (and verify) the backbone again, on this or another machine.

        Portable names first: ``preset`` (an installed package), ``hub_id`` + ``hub_revision`` (a preset records the
        id of the model it packages; a folder inside the HF cache gives its repo id and commit), then
        ``local_path`` (absolute, this machine only). ``name_or_path`` is the most portable of them. The weights
        sha256 and the full fingerprint decide whether what is found is the same backbone.
        """
        c, fp = self.backbone.config, self.backbone.fingerprint()
        name = c.name_or_path
        preset = name if name in PRESETS else None
        local = Path(name).expanduser()
        local_path = str(local.resolve()) if preset is None and local.is_dir() else None
        hub_id, hub_revision = (PRESETS[preset].get("hub_id"), None) if preset else (None, None)
        if local_path:
            hub_id, hub_revision = _hub_identity(Path(local_path))
        elif preset is None:  # a hub id
            hub_id, hub_revision = name, c.revision or fp.get("revision")
        return {"name_or_path": preset or hub_id or local_path or name, "preset": preset, "hub_id": hub_id,
                "hub_revision": hub_revision, "local_path": local_path, "revision": c.revision,
                "gguf_file": c.gguf_file, "layer": c.layer, "layers": _json_layers(c.layers), "prompt": c.prompt,
                "max_length": c.max_length, "dtype": c.dtype,
                "padding_side": c.padding_side, "hidden_size": self.backbone.dim,
                "weights_sha256": fp.get("weights_sha256"), "fingerprint": fp}

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write ``encoder.json``, ``labels.json``, ``pooler/`` and ``head/`` into ``path`` (replaced atomically).

        An existing non-empty ``path`` that is not an encoder folder is refused unless ``overwrite=True``."""
        from glotpool import __version__

        labels = {"task_type": self.task_type, "label_names": self.label_names,
                  "score_range": list(self.score_range) if self.score_range else None}
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "glotpool_version": __version__,
                "backbone": self.backbone_reference(), "pooler": self.pooler.name, "dim": self.dim,
                "head": self.head.task_type if self.head is not None else None, "training": self.training,
                "states": {"layers": self.layers, "tokens": self.tokens}, **labels}
        with atomic_dir(path, CONFIG_NAME, overwrite, "glotpool encoder folder") as tmp:
            self.pooler.save_pretrained(tmp / "pooler")
            if self.head is not None:
                self.head.save_pretrained(tmp / "head")
            atomic_write_json(tmp / "labels.json", labels)
            atomic_write_json(tmp / CONFIG_NAME, meta)
            from glotpool.io_utils import atomic_write_text
            from glotpool.model_card import encoder_card

            atomic_write_text(tmp / "README.md", encoder_card(meta, model_id=self.model_id or str(path)))

    @staticmethod
    def verify_backbone(trained: dict, backbone: Backbone, where: str = "this encoder") -> None:
        """ValueError naming every difference between a stored fingerprint and ``backbone``'s."""
        diffs = dict_diff(trained, backbone.fingerprint(), "trained on", "found", ignore=_IGNORED_FINGERPRINT_KEYS)
        if diffs:
            raise ValueError(
                f"{where} was trained on other backbone states than backbone {backbone.config.name_or_path!r} "
                f"gives: " + "; ".join(diffs[:8]) + (f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else "") +
                ". The pooler would get inputs it never saw. Fix: load the backbone it was trained on (same "
                "weights, layer, max_length, dtype, tokenizer) (CLI: --backbone DIR; Python: backbone=...), or pass "
                "--no-backbone-check (Python: check_backbone=False) to use this one anyway at your own risk.")

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Save into a temporary folder and upload it as Hub repo ``repo_id`` -> commit URL.

        ``kwargs``: :func:`glotpool.hub.push_folder`'s (``private``, ``revision``, ``token``, ``commit_message``,
        ``api``). Load it back anywhere with ``Encoder.from_pretrained(repo_id)``.
        """
        from glotpool.hub import push_saved

        old, self.model_id = self.model_id, repo_id  # the card's snippet loads the repo id
        try:
            return push_saved(self.save_pretrained, repo_id, **kwargs)
        finally:
            self.model_id = old

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, backbone: Backbone | None = None, device: str = "auto",
                        check_backbone: bool = True, revision: str | None = None) -> "Encoder":
        """Load a folder written by :meth:`save_pretrained`, or a Hub repo id holding one (``revision``: branch,
        tag or commit; offline, ``HF_HUB_OFFLINE=1``, it is found in the local HF cache).

        ``backbone=None`` finds the backbone ``encoder.json`` names, on ``device``: its preset, its folder on this
        machine, or its Hub id (+ revision), in that order. Unless ``check_backbone=False`` the backbone's
        fingerprint must equal the stored one (ValueError naming the differences otherwise).
        """
        from glotpool.hub import resolve_folder

        path = resolve_folder(path, revision, what="encoder")
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            hint = (" (this looks like a training run: use Encoder.from_run)"
                    if (path / "best").is_dir() or (path / "pooler").is_dir() else "")
            raise FileNotFoundError(f"no encoder at {path}: {CONFIG_NAME} is missing{hint}")
        try:
            meta = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg_file} is not valid JSON ({e}); restore it from the model's source or re-save "
                             f"the model (glotpool train)") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("backbone"), dict):
            raise ValueError(f"{cfg_file} is not a glotpool encoder config (no 'backbone' record); restore it "
                             f"from the model's source or re-save the model (glotpool train)")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{cfg_file} is not a glotpool encoder config (format {meta.get('format')!r})")
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"{cfg_file} has format_version {meta['format_version']}, newer than this glotpool "
                             f"understands ({FORMAT_VERSION}); upgrade glotpool")
        ref = meta["backbone"]
        trained = dict(ref.get("fingerprint") or {})
        trained["hidden_size"] = ref.get("hidden_size", trained.get("hidden_size"))
        if ref.get("weights_sha256") or "weights_sha256" in trained:
            trained["weights_sha256"] = ref.get("weights_sha256")
        where = f"the encoder at {path}"
        if backbone is None:
            backbone = _find_backbone(ref, trained if check_backbone else None, device, where)
        elif check_backbone:
            cls.verify_backbone(trained, backbone, where=where)
        pooler = load_pooler(path / "pooler", map_location="cpu")
        head = TaskHead.from_pretrained(path / "head") if (path / "head").is_dir() else None
        states = meta.get("states") or {}  # absent in folders saved before multi-layer states: the defaults
        return cls(backbone, pooler, head, label_names=meta.get("label_names"), task_type=meta.get("task_type"),
                   score_range=meta.get("score_range"), training=meta.get("training"),
                   layers=states.get("layers"), tokens=states.get("tokens", "all"))

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, backbone: Backbone, check_backbone: bool = True, *, layers=None,
                 tokens: str = "all") -> "Encoder":
        """Encoder from a ``train_pooler`` out_dir (its ``best/`` holds pooler/, head/, labels.json).

        ``layers`` / ``tokens``: the states selection the run trained on (what it passed to ``TokenCache.batch``).

        The backbone is checked against the fingerprint of the cache the run trained on, when it can be found
        (``results.json`` -> the cache's ``index.json``).
        """
        run_dir = Path(run_dir)
        best = run_dir if (run_dir / "pooler").is_dir() else run_dir / "best"
        if not (best / "pooler").is_dir():
            raise FileNotFoundError(f"{run_dir} has no best/pooler: not a finished training run (train with "
                                    f"out_dir=..., or experiment.run_one(..., save_model=True))")
        labels = json.loads((best / "labels.json").read_text()) if (best / "labels.json").is_file() else {}
        if check_backbone:
            trained = _run_backbone_fingerprint(best.parent)
            if trained is not None:
                cls.verify_backbone(trained, backbone, where=f"the run {run_dir}")
        pooler = load_pooler(best / "pooler", map_location="cpu")
        head = TaskHead.from_pretrained(best / "head") if (best / "head").is_dir() else None
        return cls(backbone, pooler, head, label_names=labels.get("label_names"), task_type=labels.get("task_type"),
                   score_range=labels.get("score_range"), training=_run_training(best.parent), layers=layers,
                   tokens=tokens)

    # --- inference -----------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], truncation: bool = True):
        """Validated texts -> unpadded token ids (a ``BatchEncoding`` of lists), what :meth:`embed_features` takes.

        ``truncation=False`` keeps every token (to measure a text against ``max_length``); a text within
        ``max_length`` tokenizes the same either way.
        """
        return self.backbone.tokenize(texts, padding=False, return_tensors=None, truncation=truncation)

    def embed_features(self, features: list[dict], dtype=None) -> torch.Tensor:
        """One batch of tokenized texts (per text a dict of token lists, rows of :meth:`tokenize`) -> ``Z [B, dim]``.

        The one forward path: :meth:`encode` runs its length-sorted batches through here, and so does
        ``glotpool serve``'s batcher. Pads to the batch's longest text; float32 on CPU, rows in ``features`` order.
        """
        bb = self.backbone
        dtype = _as_dtype(dtype, bb.device)
        autocast = dtype is not None and dtype != next(bb.model.parameters()).dtype
        batch = bb.pad(features)
        with torch.inference_mode():
            with torch.autocast(bb.device.type, dtype=dtype, enabled=autocast):
                h, mask = bb.forward_batch(batch)
            h, mask = select_states(h, mask, batch.get("text_mask"), bb.layers, self.layers, self.tokens,
                                    num_layers=bb.num_layers)
            # the pooler: fp32 master weights, under the same autocast the trainer uses (self.precision)
            with pooler_autocast(bb.device, self.precision):
                return self.pooler(h, mask).float().cpu()

    def _embed(self, texts: list[str], batch_size: int, dtype=None, bar=None) -> torch.Tensor:
        """Validated texts -> ``Z [N, dim]`` float32 on CPU, input order. ``bar``: a tqdm advanced per batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dtype = _as_dtype(dtype, self.backbone.device)
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)  # a normal tensor (not an inference one)
        enc = self.tokenize(texts)  # once; batches are padded to their longest
        keys = list(enc.keys())
        with torch.inference_mode():
            for idx in length_sorted_batches([len(ids) for ids in enc["input_ids"]], batch_size):
                out[torch.as_tensor(idx)] = self.embed_features([{k: enc[k][i] for k in keys} for i in idx], dtype)
                if bar is not None:
                    bar.update(len(idx))
        return out

    def encode(self, texts: Sequence[str] | str, batch_size: int = 32, normalize: bool = False,
               show_progress: bool | None = None, convert_to: str = "numpy", dtype=None, *,
               column: str | None = None, normalize_embeddings: bool | None = None,
               convert_to_tensor: bool = False, convert_to_numpy: bool | None = None,
               show_progress_bar: bool | None = None, device=None, **unused):
        """texts -> ``Z [N, dim]`` (numpy float32, or a torch.Tensor with ``convert_to="torch"``), input order.

        ``normalize``: unit L2 norm rows. ``dtype`` ("bfloat16", "float16" or a torch dtype): run the backbone under
        autocast in that dtype (faster on GPUs; slightly different states). A single string gives ``[dim]`` (as
        ``SentenceTransformer.encode`` does); an empty list gives ``[0, dim]``; an empty (or whitespace) text is a
        ValueError naming its index. ``texts`` may be a ``datasets`` column, or a ``datasets.Dataset`` with
        ``column=`` naming its text column.

        sentence-transformers' names work too, so code written for ``SentenceTransformer.encode`` runs unchanged:
        ``normalize_embeddings`` (= ``normalize``), ``convert_to_tensor=True`` (= ``convert_to="torch"``),
        ``convert_to_numpy``, ``show_progress_bar`` (= ``show_progress``); ``device`` and other ST-only options
        (``prompt_name``, ``precision``, ...) are accepted and ignored (the model stays on its device).
        ``show_progress=None`` (default): a bar only when stderr is a terminal.
        """
        single = isinstance(texts, str)
        if normalize_embeddings is not None:
            normalize = normalize_embeddings
        if show_progress_bar is not None:
            show_progress = show_progress_bar
        if convert_to_tensor:
            convert_to = "torch"
        elif convert_to_numpy is False and convert_to == "numpy":
            convert_to = "torch"
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        if hasattr(texts, "column_names") and not single:  # a datasets.Dataset
            if column is None:
                str_cols = [c for c, f in texts.features.items() if getattr(f, "dtype", None) == "string"]
                if len(str_cols) != 1:
                    raise ValueError(f"a datasets.Dataset needs column=... (its columns: {texts.column_names})")
                column = str_cols[0]
            texts = texts[column]
        texts = _as_texts(texts)
        _as_dtype(dtype)  # fail before the progress bar
        if not texts:
            z = torch.zeros(0, self.dim)
        else:
            from tqdm.auto import tqdm

            disable = None if show_progress is None else not show_progress  # None: off when not a terminal
            with tqdm(total=len(texts), desc="encode", unit="text", disable=disable, leave=False) as bar:
                z = self._embed(texts, batch_size, dtype, bar)
        if normalize:
            z = F.normalize(z, dim=-1)
        if single:
            z = z[0]
        return z if convert_to == "torch" else z.numpy()

    def _classifier(self) -> TaskHead:
        if self.head is None or not self.head.is_classification:
            raise ValueError(f"this encoder has no classifier head (task type {self.task_type!r}); predict needs a "
                             f"model trained on a 'single' or 'pair' task; use encode() / similarity() instead")
        return self.head

    def predict_logits(self, texts, texts2=None, batch_size: int = 32, show_progress: bool = False,
                       dtype=None) -> torch.Tensor:
        """Classifier logits ``[N, C]`` (float32, CPU). ``texts2``: second sentences for a pair classifier."""
        head = self._classifier()
        texts = _as_texts(texts)
        if head.is_pair and texts2 is None:
            raise ValueError("this is a pair classifier: give the second sentences (texts2 / --text-col-2)")
        if not head.is_pair and texts2 is not None:
            raise ValueError("this is a single-sentence classifier: texts2 must be None")
        if texts2 is not None:
            texts2 = _as_texts(texts2, "texts2")
            if len(texts2) != len(texts):
                raise ValueError(f"texts has {len(texts)} items but texts2 has {len(texts2)}; they must be parallel")
        n_classes = head.config.num_labels
        if not texts:
            return torch.zeros(0, n_classes)
        z1 = self.encode(texts, batch_size, show_progress=show_progress, convert_to="torch", dtype=dtype)
        z2 = (self.encode(texts2, batch_size, show_progress=show_progress, convert_to="torch", dtype=dtype)
              if texts2 is not None else None)
        return self.logits_from_vectors(z1, z2)

    def logits_from_vectors(self, z1: torch.Tensor, z2: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier head on pooled (unnormalized) vectors -> logits ``[N, C]`` float32 on CPU."""
        head, dev = self._classifier(), self.backbone.device
        with torch.inference_mode():
            logits = head(z1.to(dev), z2.to(dev) if z2 is not None else None)
        return logits.float().cpu().clone()

    def predict_proba(self, texts, texts2=None, batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``[N, C]`` (softmax of the head's logits); columns follow ``label_names``."""
        return torch.softmax(self.predict_logits(texts, texts2, batch_size), dim=-1).numpy()

    def predict(self, texts, texts2=None, batch_size: int = 32) -> list[str]:
        """Predicted label names (or class ids as strings when the model has no label names)."""
        proba = self.predict_proba(texts, texts2, batch_size)
        bad = np.nonzero(~np.isfinite(proba).all(1))[0].tolist() if len(proba) else []
        if bad:  # never turn a NaN into a label
            raise ValueError(f"texts at index(es) {rows_str(bad)} give non-finite logits (NaN/Inf): the model's weights "
                             f"are likely corrupt; re-copy or retrain the model")
        names = self.label_names or [str(i) for i in range(proba.shape[1])]
        return [names[i] for i in proba.argmax(1)] if len(proba) else []

    def similarity(self, a, b, batch_size: int = 32) -> np.ndarray:
        """Cosine similarity of ``a[i]`` and ``b[i]``: ``[N]`` (what an STS head predicts; any encoder works)."""
        a, b = _as_texts(a, "a"), _as_texts(b, "b")
        if len(a) != len(b):
            raise ValueError(f"a has {len(a)} texts but b has {len(b)}; similarity compares a[i] with b[i]")
        za = self.encode(a, batch_size, show_progress=False, convert_to="torch")
        zb = self.encode(b, batch_size, show_progress=False, convert_to="torch")
        return F.cosine_similarity(za, zb, dim=-1).numpy() if len(a) else np.zeros(0, np.float32)

    def truncation_report(self, texts) -> dict:
        """How many texts exceed ``max_length`` tokens (and get truncated by encode).

        -> ``{"n", "max_length", "truncated", "indices" (0-based, all of them), "longest"}`` (token counts include
        the tokenizer's special tokens).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        max_len = self.backbone.config.max_length
        lengths = [len(ids) for ids in self.tokenize(texts, truncation=False)["input_ids"]] if texts else []
        over = [i for i, n in enumerate(lengths) if n > max_len]
        return {"n": len(texts), "max_length": max_len, "truncated": len(over), "indices": over,
                "longest": max(lengths, default=0)}


def _hub_identity(folder: Path) -> tuple[str | None, str | None]:
    """(repo id, commit) of a folder inside a Hugging Face cache (``models--org--name/snapshots/<commit>``)."""
    parts = folder.parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            return parts[i][len("models--"):].replace("--", "/"), parts[i + 2]
    return None, None


def _backbone_candidates(ref: dict) -> list[tuple[str, str, dict]]:
    """Where the backbone of ``ref`` may be, most portable first: (label, name_or_path, extra load kwargs)."""
    from glotpool.hub import resolve_folder

    name = ref["name_or_path"]
    preset = ref.get("preset") or (name if name in PRESETS else None)
    out, seen = [], set()

    def add(label, target, **kw):
        if target and target not in seen:
            seen.add(target)
            out.append((label, target, kw))

    if preset:
        add(f"preset {preset!r}", preset)
    for local in (ref.get("local_path"), name):
        if local and Path(local).expanduser().is_dir():
            add(f"folder {local}", str(local))
    hub_id = ref.get("hub_id") or (name if preset is None and not Path(name).is_absolute() else None)
    if hub_id:
        hub_rev = ref.get("hub_revision") if ref.get("hub_id") else ref.get("revision")
        if ref.get("weights_sha256") or preset or ref.get("local_path"):
            # trained on a folder (a preset's, or a cached snapshot): load the snapshot as a folder, so the
            # fingerprint is computed the same way (weights + tokenizer file hashes)
            add(f"Hub repo {hub_id!r}", f"hub:{hub_id}",
                resolve=lambda: str(resolve_folder(hub_id, hub_rev, what="backbone")))
        else:
            add(f"Hub repo {hub_id!r}", hub_id, revision=hub_rev)
    return out


def _json_layers(layers):
    """A layer selection as JSON holds it (tuples become lists), so a saved and a loaded encoder compare equal."""
    return list(layers) if isinstance(layers, tuple) else layers


def backbone_kwargs(ref: dict) -> dict:
    """``load_backbone`` keyword arguments that rebuild the states of an ``encoder.json`` backbone reference
    (folders saved before prompts / multi-layer states have neither: a raw, single-layer backbone)."""
    layers = ref.get("layers")
    return dict(layer=ref["layer"], layers=tuple(layers) if isinstance(layers, list) else layers,
                prompt=ref.get("prompt"), max_length=ref["max_length"], dtype=ref["dtype"],
                padding_side=ref["padding_side"], gguf_file=ref["gguf_file"])


def _find_backbone(ref: dict, trained: dict | None, device: str, where: str) -> Backbone:
    """The first candidate of :func:`_backbone_candidates` that loads (and, with ``trained``, matches it)."""
    kw = dict(backbone_kwargs(ref), device=device)
    failures, mismatch = [], None
    candidates = _backbone_candidates(ref)
    for label, target, extra in candidates:
        extra = dict(extra)
        try:
            if "resolve" in extra:
                target = extra.pop("resolve")()
            bb = load_backbone(target, **{**kw, **extra})
        except (OSError, ModuleNotFoundError, ImportError, ValueError) as e:
            failures.append(f"{label}: {e}")
            continue
        if trained is None:
            return bb
        try:
            Encoder.verify_backbone(trained, bb, where=where)
            return bb
        except ValueError as e:
            mismatch = mismatch or e
            failures.append(f"{label}: fingerprint differs")
    if mismatch is not None:
        raise mismatch
    tried = "; ".join(failures) or "no reference to try"
    raise FileNotFoundError(f"cannot find the backbone {ref['name_or_path']!r} {where} was trained on (tried: "
                            f"{tried}); install the preset, put the model in the Hugging Face cache, or load it "
                            f"yourself and pass backbone=...")


def _run_training(run_dir: Path) -> dict:
    """What a run's ``run.json`` says about how its model was trained (for encoder.json and the model card)."""
    try:
        rec = json.loads((run_dir / "run.json").read_text())["record"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    keep = ("pooler", "options", "seed", "train_config", "metric", "dev", "test", "best_epoch",
            "trainable_parameters", "train_seconds")
    return {"pooler_spec": rec.get("label"), **{k: rec.get(k) for k in keep if k in rec}}


def _run_backbone_fingerprint(run_dir: Path) -> dict | None:
    """The backbone fingerprint of the cache a run trained on, if ``results.json`` leads to it."""
    try:
        rec = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    cache = rec.get("cache") or {}
    if isinstance(cache.get("backbone"), dict):
        return cache["backbone"]
    try:
        index = json.loads((Path(cache["path"]) / "index.json").read_text())
        return index["meta"]["identity"]["backbone"]
    except (KeyError, TypeError, OSError, ValueError):
        return None


__all__ = ["Encoder", "backbone_kwargs"]
