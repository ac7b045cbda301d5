"""Hidden-state cache: run the frozen backbone once, then train poolers from disk.

Layout of a cache folder::

    shard-00000.safetensors   one tensor "states" [T_shard, D]: the real tokens of consecutive examples, ragged
    shard-00001.safetensors   (no padding), in store dtype (float16 by default: half the bytes, ~1e-3 rel. error);
    ...                       a multi-layer backbone (``layers=...``) stores [T_shard, K, D], K layers per token
    texts.json                the cached texts, in input order (example i = texts[i])
    index.json                written LAST = the cache is complete. Per example: shard id, row offset, length
                              (+ with a prompt: text_start, text_end, the text's tokens within the example's);
                              meta: backbone fingerprint, dim, store dtype, n, texts fingerprint, cache key.
    progress.json             only while building: the key + sha256 of every finished shard (for resuming);
                              a distributed build writes one ``progress.rankNNNNN.json`` per rank instead.

Examples are processed in a deterministic length-sorted order (longest first, ties by index) and shards end at
fixed batch boundaries, so a build killed at any point and rerun continues at the first missing shard and ends
byte-identical to an uninterrupted build (same machine and thread count: float kernels may differ elsewhere).

Reading memory-maps the shards lazily (``safetensors.safe_open`` -> zero-copy tensor), so a cache larger than
RAM still trains; :meth:`TokenCache.batch` gathers and right-pads a batch with a few vectorized tensor ops.

**Distributed caching** (``glotpool dist cache`` under torchrun / accelerate): every rank tokenizes all texts and
computes the same global, length-sorted shard plan (:func:`plan_shards`); rank ``r`` encodes shards
``k % world_size == r`` and writes them under their global names into the shared output folder, with its own
``progress.rankNNNNN.json`` (resumable per rank). After a barrier, rank 0 runs the ordinary single-process
:func:`build_cache`, which adopts every rank's hash-checked shards, encodes nothing and writes ``index.json``. Each
shard holds exactly the batches a single-process build would encode, so the result is byte-identical to a
single-process cache (same hardware and thread count). Without a process group (e.g. independent jobs of a job
array) each rank just writes its shards; run :func:`merge_cache` (``glotpool dist merge``) afterwards.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from glotpool.states.backbone import Backbone, iter_encoded, length_sorted_batches, token_lengths
from glotpool.states.selection import check_tokens, layer_positions
from glotpool.io_utils import atomic_path, atomic_write_json, dict_diff, sha256_file, sha256_texts

log = logging.getLogger(__name__)

FORMAT = "glotpool-token-cache"
VERSION = 1
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
INDEX, PROGRESS, TEXTS = "index.json", "progress.json", "texts.json"


def unique_texts(*columns: Sequence[str] | None) -> list[str]:
    """Unique texts of the given columns, first-seen order (deterministic, so the cache key is stable)."""
    return list(dict.fromkeys(t for col in columns if col is not None for t in col))


def cache_key(backbone_fingerprint: dict, texts_fingerprint: str, store_dtype: str) -> str:
    """sha256 hex of everything that determines the cached states."""
    blob = json.dumps({"backbone": backbone_fingerprint, "texts": texts_fingerprint, "store_dtype": store_dtype,
                       "format": VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def plan_shards(lengths: Sequence[int], batch_size: int, shard_tokens: int) -> list[list[list[int]]]:
    """Deterministic build plan: shards -> batches -> example indices.

    Batches come from :func:`length_sorted_batches`; a shard closes after the batch that brings it to
    ``>= shard_tokens`` tokens, so shard contents depend only on (lengths, batch_size, shard_tokens).
    """
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
    shards, cur, tokens = [], [], 0
    for b in length_sorted_batches(lengths, batch_size):
        cur.append(b)
        tokens += sum(lengths[i] for i in b)
        if tokens >= shard_tokens:
            shards.append(cur)
            cur, tokens = [], 0
    if cur:
        shards.append(cur)
    return shards


def _write_shard(path: Path, states: torch.Tensor) -> dict:
    """Atomically write one shard ``states [T, D]`` (or ``[T, K, D]``); return its file record (name, sha256, bytes, tokens)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"states": states.contiguous()}, str(tmp), metadata={"format": FORMAT})
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "tokens": int(states.shape[0])}


def _check_same_key(out_dir: Path, record: dict, key: str, wanted: dict, what: str) -> None:
    if record.get("key") == key:
        return
    diffs = dict_diff(record.get("meta", {}).get("identity", {}), wanted, "cached", "requested") or ["(cache format version)"]
    for j, d in enumerate(diffs):  # make the two common cases readable
        if d.startswith("texts_sha256:"):
            diffs[j] = "texts differ (other content or order)"
        elif d.startswith("backbone.layer:"):
            diffs[j] = d + " (hidden_states index; the last layer = num_layers = -1)"
    raise ValueError(
        f"{out_dir} already holds {what} built with different settings: " + "; ".join(diffs[:8]) +
        (f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else "") +
        ". Use another output folder (--out) or pass --overwrite (Python: overwrite=True) to replace it.")


def _progress_name(rank: int, world_size: int) -> str:
    return PROGRESS if world_size == 1 else f"progress.rank{rank:05d}.json"


def _progress_files(out_dir: Path) -> list[Path]:
    """Every progress record of an unfinished build: single-process first, then per-rank ones."""
    single = [out_dir / PROGRESS] if (out_dir / PROGRESS).is_file() else []
    return single + sorted(out_dir.glob("progress.rank*.json"))


def _remove_cache_files(out_dir: Path) -> None:
    """Delete only files this module writes (never a whole user folder)."""
    for p in [out_dir / INDEX, out_dir / TEXTS, *_progress_files(out_dir), *out_dir.glob("shard-*.safetensors")]:
        p.unlink(missing_ok=True)


LOCK = ".lock"


def _single_writer(fn):
    """Run ``fn`` (a cache build into ``out_dir``) under an exclusive lock on ``out_dir/.lock`` (``filelock``):
    a second process building into the same folder waits for the first (then reuses its complete cache) instead
    of interleaving shards. Ranks of a distributed build (``world_size > 1``) write disjoint shards and do not
    lock; their merge does. ``GLOTPOOL_LOCK_TIMEOUT`` (seconds, default: wait forever) bounds the wait."""
    import functools

    @functools.wraps(fn)
    def wrapper(backbone, texts, out_dir, *args, **kwargs):
        if kwargs.get("world_size", 1) != 1:
            return fn(backbone, texts, out_dir, *args, **kwargs)
        from filelock import FileLock, Timeout

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            import sys

            limit = float(os.environ.get("GLOTPOOL_LOCK_TIMEOUT", "-1"))
            print(f"note: another process is building the cache {out}; waiting for it to finish "
                  f"(lock {out / LOCK})", file=sys.stderr)
            try:
                lock.acquire(timeout=limit)
            except Timeout:
                raise ValueError(f"another process is still building the cache {out} (lock {out / LOCK} held "
                                 f"after {limit:g} s); wait for it to finish, or use another --out") from None
        try:
            return fn(backbone, texts, out_dir, *args, **kwargs)
        finally:
            lock.release()

    return wrapper


@_single_writer
def build_cache(backbone: Backbone, texts: Sequence[str], out_dir: str | os.PathLike, *, batch_size: int = 32,
                shard_tokens: int = 1_000_000, store_dtype: str = "float16", show_progress: bool = True,
                overwrite: bool = False, extra_meta: dict | None = None, rank: int = 0,
                world_size: int = 1) -> "TokenCache | None":
    """Run ``backbone`` over ``texts`` once and store every text's token states ``[len_i, D]`` in ``out_dir``
    (``[len_i, K, D]`` for a backbone with ``layers``; with a prompt, the prompted text's tokens plus the span of
    the text among them).

    - ``out_dir`` holds a complete cache with the same key -> reused, the backbone does not run.
    - ``out_dir`` holds a (partial) cache with another key -> ValueError naming what differs; ``overwrite=True``
      deletes the old cache files first.
    - A partial build with the same key resumes at the first missing shard (with the batch size and shard size it
      was started with, so the result is byte-identical).
    ``shard_tokens`` ~ tokens per shard (1M tokens x 384 dims x fp16 = 768 MB); ``extra_meta`` is stored as
    ``meta["extra"]`` (e.g. which data columns the texts came from) and is not part of the key.

    ``world_size > 1`` = one rank of a distributed build (see :mod:`glotpool.distributed`): the plan is the same
    global one, this call encodes only shards ``k % world_size == rank``, records them in ``progress.rankNNNNN.json``
    and returns None (no index). A later ``world_size=1`` call with the same arguments adopts every rank's shards
    (hash-checked), encodes only what is still missing and writes the index: the same bytes as a one-process build.
    """
    if not (isinstance(world_size, int) and isinstance(rank, int) and world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if store_dtype not in STORE_DTYPES:
        raise ValueError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must be strings; items {bad[:5]} are {type(texts[bad[0]]).__name__} "
                         f"(cache both sides of a pair as separate texts)")
    if not texts:
        raise ValueError("build_cache got no texts")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"texts {empty[:5]} are empty; drop empty texts before caching")
    out_dir = Path(out_dir)
    fp = backbone.fingerprint()
    texts_fp = sha256_texts(texts)
    key = cache_key(fp, texts_fp, store_dtype)
    identity = {"backbone": fp, "texts_sha256": texts_fp, "n": len(texts), "store_dtype": store_dtype}

    if overwrite:
        _remove_cache_files(out_dir)
    if (out_dir / INDEX).is_file():
        _check_same_key(out_dir, _read_json(out_dir / INDEX), key, identity, "a cache")
        log.info("reusing complete cache %s", out_dir)
        return open_cache(out_dir, verify=True) if world_size == 1 else None
    progress_file = out_dir / _progress_name(rank, world_size)
    # Resume from every earlier record (this rank's own first): a build may continue with another world size.
    records = [(p, _read_json(p)) for p in _progress_files(out_dir)]
    records.sort(key=lambda pr: pr[0] != progress_file)
    for _, rec in records:
        _check_same_key(out_dir, rec, key, identity, "an unfinished cache")
    if records:
        first = records[0][1]
        if (first["batch_size"], first["shard_tokens"]) != (batch_size, shard_tokens):
            log.warning("resuming with the original batch_size=%d, shard_tokens=%d (asked %d, %d) so shards match",
                        first["batch_size"], first["shard_tokens"], batch_size, shard_tokens)
        batch_size, shard_tokens = first["batch_size"], first["shard_tokens"]
    progress = {"key": key, "meta": {"identity": identity}, "batch_size": batch_size,
                "shard_tokens": shard_tokens, "done": {}}
    for _, rec in reversed(records):  # same plan only; this rank's own records win
        if (rec["batch_size"], rec["shard_tokens"]) == (batch_size, shard_tokens):
            progress["done"].update(rec["done"])
    out_dir.mkdir(parents=True, exist_ok=True)

    encoding = backbone.tokenize(texts, padding=False, return_tensors=None)  # once, for the plan and the batches
    lengths = token_lengths(backbone, texts, encoding)
    plan = plan_shards(lengths, batch_size, shard_tokens)
    done: dict = progress["done"]
    mine = {k for k in range(len(plan)) if k % world_size == rank}
    # A shard counts as done only if its file is still there with the recorded hash (else it is recomputed).
    # Other ranks' shards are not this rank's business: the merging (world_size=1) call checks those.
    for k in list(done):
        if int(k) not in mine:
            continue
        p = out_dir / _shard_name(int(k))
        if not p.is_file() or p.stat().st_size != done[k]["bytes"] or sha256_file(p) != done[k]["sha256"]:
            del done[k]
    todo = [k for k in range(len(plan)) if k in mine and str(k) not in done]
    sdtype = STORE_DTYPES[store_dtype]

    from tqdm.auto import tqdm
    n_mine = sum(len(b) for k in mine for b in plan[k])
    n_done = sum(len(b) for k in mine if str(k) in done for b in plan[k])
    rank_tag = f" rank {rank}/{world_size}" if world_size > 1 else ""
    bar = tqdm(total=n_mine, initial=n_done, unit="ex", desc=f"caching {out_dir.name}{rank_tag}",
               disable=not show_progress or None, smoothing=0.1)
    atomic_write_json(progress_file, progress)
    # One pass over the batches of all missing shards; a shard is written as soon as its last batch is done.
    flat = [(k, b) for k in todo for b in plan[k]]
    parts: list[torch.Tensor] = []
    encoded = iter_encoded(backbone, texts, batches=[b for _, b in flat], encoding=encoding)
    for (k, _), (idx, h, mask) in zip(flat, encoded):
        got = mask.sum(1).tolist()
        if got != [lengths[i] for i in idx]:  # the plan's offsets rely on these lengths
            raise RuntimeError(f"token counts changed between tokenization and encoding: {got}")
        parts.append(h[mask.bool()].to(device="cpu", dtype=sdtype))  # [sum len, D], in batch row order
        bar.update(len(idx))
        if len(parts) == len(plan[k]):
            states = torch.cat(parts)
            parts = []
            if not torch.isfinite(states).all():
                raise ValueError(f"hidden states overflow {store_dtype} in shard {k} (layers {backbone.layers}); "
                                 f"store them as bfloat16 or float32 (--dtype)")
            done[str(k)] = _write_shard(out_dir / _shard_name(k), states)
            atomic_write_json(progress_file, progress)
    bar.close()
    if world_size > 1:
        return None  # the index is written by a world_size=1 call once every rank is done

    # Per-example index in INPUT order (plan order is the sorted one).
    shard_of = np.zeros(len(texts), np.int64)
    offset = np.zeros(len(texts), np.int64)
    for k, batches in enumerate(plan):
        row = 0
        for b in batches:
            for i in b:
                shard_of[i], offset[i] = k, row
                row += lengths[i]
    examples = {"shard": shard_of.tolist(), "offset": offset.tolist(), "length": list(lengths)}
    if backbone.prompt is not None:  # the text's tokens: a contiguous run [start, end) of the example's tokens
        examples["text_start"], examples["text_end"] = _text_spans(encoding["text_mask"])
    import transformers
    meta = {"identity": identity, "key": key, "dim": backbone.dim, "n": len(texts), "store_dtype": store_dtype,
            "n_tokens": int(sum(lengths)), "batch_size": batch_size, "shard_tokens": shard_tokens,
            "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__},
            "extra": extra_meta or {}}
    index = {"format": FORMAT, "version": VERSION, "key": key, "meta": meta,
             "shards": [done[str(k)] for k in range(len(plan))],
             "examples": examples}
    atomic_write_json(out_dir / TEXTS, texts)
    atomic_write_json(out_dir / INDEX, index)  # last: its presence marks the cache complete
    for p in _progress_files(out_dir):
        p.unlink(missing_ok=True)
    cache = open_cache(out_dir, verify=False)
    log.info("cache %s: %s", out_dir, cache.size_str())
    return cache


def _text_spans(text_masks: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """Per example (unpadded text mask) -> (start, end) of its one run of text tokens."""
    starts, ends = [], []
    for i, m in enumerate(text_masks):
        on = np.flatnonzero(np.asarray(m))
        if on.size == 0 or on[-1] - on[0] + 1 != on.size:
            raise RuntimeError(f"text {i}: its tokens inside the prompt are not one contiguous run ({m})")
        starts.append(int(on[0]))
        ends.append(int(on[-1]) + 1)
    return starts, ends


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the cache is damaged: delete {path.parent} and "
                         f"rerun `glotpool cache` (or build_cache(..., overwrite=True))") from e


def _read_texts(path: Path, meta: dict) -> list[str]:
    """``texts.json`` of a cache, verified against ``meta.identity.texts_sha256`` (ValueError on any change)."""
    fix = (f"delete {path} and rerun `glotpool cache` with the same arguments "
           f"(or build_cache(..., overwrite=True))")
    f = path / TEXTS
    if not f.is_file():
        raise ValueError(f"cache texts {f} is missing; {fix}")
    texts = _read_json(f)
    want = meta.get("identity", {}).get("texts_sha256")
    if not isinstance(texts, list) or len(texts) != int(meta.get("n", len(texts))) or (
            want is not None and sha256_texts(texts) != want):
        raise ValueError(f"cache texts {f} do not match the cache index (edited, reordered or replaced: "
                         f"texts_sha256 differs), so texts would be paired with other texts' states; {fix}")
    return texts


def open_cache(path: str | os.PathLike, verify: bool = True) -> "TokenCache":
    """Open a complete cache folder. ``verify`` checks every shard's sha256 (~1 GB/s); sizes are always checked."""
    path = Path(path)
    if not (path / INDEX).is_file():
        if _progress_files(path):
            raise ValueError(f"{path} holds an unfinished cache (the build was interrupted, or a distributed "
                             f"build was not merged yet): rerun the same `glotpool cache` / build_cache call to "
                             f"resume it (distributed: rerun it, or `python -m glotpool.distributed merge`)")
        raise FileNotFoundError(f"no cache at {path} (missing {INDEX}); build one with `glotpool cache`")
    index = _read_json(path / INDEX)
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(f"{path / INDEX} is not a {FORMAT} v{VERSION} index; rebuild the cache with "
                         f"`glotpool cache` into a new folder")
    fix = (f"delete {path} and rerun `glotpool cache` with the same arguments "
           f"(or build_cache(..., overwrite=True))")
    for rec in index["shards"]:
        f = path / rec["file"]
        if not f.is_file():
            raise ValueError(f"cache shard {f} is missing; {fix}")
        size = f.stat().st_size
        if size != rec["bytes"]:
            raise ValueError(f"cache shard {f} is truncated or corrupt ({size} bytes, expected {rec['bytes']}); {fix}")
        if verify and sha256_file(f) != rec["sha256"]:
            raise ValueError(f"cache shard {f} is corrupt (sha256 mismatch); {fix}")
    cache = TokenCache(path, index)
    cache._texts = _read_texts(path, index["meta"])  # always: a wrong texts.json silently trains on wrong states
    return cache


class TokenCache:
    """Read side of a cache: ``get(i) -> [len_i, D]``, ``batch(indices) -> (H [B, Lmax, D], mask [B, Lmax])``.

    A multi-layer cache holds ``K = len(cache.layers)`` layers per token (``get(i) -> [len_i, K, D]``);
    :meth:`batch` selects layers and tokens (see :mod:`glotpool.states.selection`). ``dim`` is always D.
    """

    def __init__(self, path: str | os.PathLike, index: dict):
        self.path = Path(path)
        self.meta: dict = index["meta"]
        self.key: str = index["key"]
        self.dim: int = int(self.meta["dim"])
        self.store_dtype = STORE_DTYPES[self.meta["store_dtype"]]
        ex = index["examples"]
        self.lengths = np.asarray(ex["length"], dtype=np.int64)
        self.shard_ids = np.asarray(ex["shard"], dtype=np.int64)
        self.offsets = np.asarray(ex["offset"], dtype=np.int64)
        self._files = [self.path / r["file"] for r in index["shards"]]
        self.nbytes = int(sum(r["bytes"] for r in index["shards"]))
        # a cache written by build_cache always records its backbone; one assembled by hand (tests, tools) may
        # not: it is then one layer, the last
        fp = self.meta.get("identity", {}).get("backbone", {})
        self.num_layers = int(fp.get("num_layers", 0))
        self.multi_layer = "layers" in fp            # shards hold [T, K, D] (else [T, D])
        self.layers: tuple[int, ...] = (tuple(fp["layers"]) if self.multi_layer else
                                        (int(fp.get("layer", self.num_layers)),))
        self.prompt: str | None = fp.get("prompt")
        spans = ex.get("text_start"), ex.get("text_end")
        self.text_start, self.text_end = (None, None) if spans[0] is None else (
            np.asarray(spans[0], dtype=np.int64), np.asarray(spans[1], dtype=np.int64))
        self._states: list[torch.Tensor | None] = [None] * len(self._files)
        self._texts: list[str] | None = None
        self._text_index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def __repr__(self) -> str:
        return (f"TokenCache({str(self.path)!r}, n={len(self)}, dim={self.dim}, layers={list(self.layers)}, "
                f"tokens={int(self.lengths.sum())}, dtype={self.meta['store_dtype']}, shards={len(self._files)})")

    def size_str(self) -> str:
        """Disk size, per layer too: e.g. ``"31 layers, 1480.2 MB (47.7 MB per layer)"``."""
        k, mb = len(self.layers), self.nbytes / 1e6
        return f"{k} layer{'s' if k > 1 else ''}, {mb:.1f} MB" + (f" ({mb / k:.1f} MB per layer)" if k > 1 else "")

    # pickling (DataLoader workers): reopen shards lazily in the child instead of sending mmaps
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_states"] = [None] * len(self._files)
        return state

    def _shard(self, k: int) -> torch.Tensor:
        """Shard ``k`` as a zero-copy memory-mapped tensor ``[T_k, D]`` (opened on first use)."""
        s = self._states[k]
        if s is None:
            from safetensors import safe_open
            with safe_open(str(self._files[k]), framework="pt") as f:
                s = f.get_tensor("states")
            self._states[k] = s
        return s

    def get(self, i: int) -> torch.Tensor:
        """Token states of example ``i``: ``[len_i, D]`` (``[len_i, K, D]`` multi-layer) in the stored dtype (a
        copy; safe to modify)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for a cache of {len(self)}")
        i = int(i) % len(self)
        o = int(self.offsets[i])
        return self._shard(int(self.shard_ids[i]))[o:o + int(self.lengths[i])].clone()

    def batch(self, indices: Sequence[int], dtype: torch.dtype = torch.float32, *, layers=None,
              tokens: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
        """Gather and right-pad: -> (H [B, Lmax, D] ``dtype``, zeros at padding; mask [B, Lmax] long).

        ``layers``: None = every held layer (``[B, Lmax, D]`` if one is held, else ``[B, Lmax, K, D]``); an int
        hidden_states index (-1 = the last layer) -> ``[B, Lmax, D]``; a tuple / list -> ``[B, Lmax, len, D]`` in
        that order. ``tokens``: "all" = every real token, prompt included; "text" = only the text's span (H and
        positions unchanged). Only the selected layers are read from the shards.

        Training hot path: per shard one row gather + one ``index_copy_`` (no Python work per token).
        """
        if layers is None and not self.multi_layer:   # the single-layer hot path: no selection work
            pos, squeeze = [0], True
        else:
            pos, squeeze = layer_positions(self.layers, layers, self.num_layers)
        # every held layer in stored order: gather whole rows; else only the selected layers of each row
        pos_t = None if pos == list(range(len(self.layers))) else torch.tensor(pos)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("batch() got no indices")
        if idx.min() < -len(self) or idx.max() >= len(self):
            raise IndexError(f"batch indices out of range for a cache of {len(self)}")
        idx = idx % len(self)
        lens, offs, shards = self.lengths[idx], self.offsets[idx], self.shard_ids[idx]
        B, L = len(idx), int(lens.max())
        row = (self.dim,) if not self.multi_layer else (len(pos), self.dim)
        out = torch.zeros(B * L, *row, dtype=dtype)
        for k in np.unique(shards):
            sel = np.nonzero(shards == k)[0]                      # batch rows stored in shard k
            ls = lens[sel]
            total = int(ls.sum())
            starts = np.cumsum(ls) - ls                           # where each row begins in the flat run
            within = np.arange(total) - np.repeat(starts, ls)     # token position inside its example
            src = np.repeat(offs[sel], ls) + within               # rows in the shard tensor
            dst = np.repeat(sel * L, ls) + within                 # rows in out [B*L, D]
            src_t = torch.from_numpy(src)
            vals = self._shard(int(k))[src_t if pos_t is None else (src_t[:, None], pos_t[None, :])]
            out.index_copy_(0, torch.from_numpy(dst), vals.to(dtype))
        pos_l = torch.arange(L)[None, :]
        if check_tokens(tokens) == "text" and self.text_start is not None:
            mask = ((pos_l >= torch.from_numpy(self.text_start[idx])[:, None]) &
                    (pos_l < torch.from_numpy(self.text_end[idx])[:, None])).long()
        else:
            mask = (pos_l < torch.from_numpy(lens)[:, None]).long()
        H = out.view(B, L, *row)
        if self.multi_layer and squeeze:           # one layer selected: [B, L, D]
            H = H.squeeze(2)
        elif not self.multi_layer and not squeeze:  # a list selecting the one held layer: [B, L, 1, D]
            H = H.unsqueeze(2)
        return H, mask

    @property
    def texts(self) -> list[str]:
        """The cached texts in cache order (loaded on first use, checked against the index's ``texts_sha256``:
        an edited or reordered texts.json would pair texts with other texts' states)."""
        if self._texts is None:
            self._texts = _read_texts(self.path, self.meta)
        return self._texts

    def lookup(self, texts: Sequence[str]) -> list[int]:
        """Cache indices of ``texts`` (e.g. a dataset column) -> list[int]; ValueError if a text is not cached."""
        if self._text_index is None:
            self._text_index = {t: i for i, t in enumerate(self.texts)}
        try:
            return [self._text_index[t] for t in texts]
        except KeyError as e:
            raise ValueError(f"text {str(e)[:80]} is not in cache {self.path}; rebuild the cache for this "
                             f"data with `glotpool cache`") from None


__all__ = ["cache_key", "build_cache", "open_cache", "TokenCache", "plan_shards", "STORE_DTYPES"]


# ----------------------------------------------------------------------------------------------------------------
# process groups and distributed caching (torchrun / accelerate)


def _pg_world() -> int | None:
    """World size of the initialised default process group, else None."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else None


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else the process group, else RANK/WORLD_SIZE (torchrun), else (0, 1)."""
    pg = _pg_world()
    if rank is None:
        rank = dist.get_rank() if pg else int(os.environ.get("RANK", 0))
    if world_size is None:
        world_size = pg or int(os.environ.get("WORLD_SIZE", 1))
    if pg and (rank, world_size) != (dist.get_rank(), pg):
        raise ValueError(f"rank={rank}, world_size={world_size} contradict the initialised process group "
                         f"(rank {dist.get_rank()} of {pg}); leave them out to use the process group's")
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def init_distributed(backend: str | None = None, timeout_minutes: float = 120.0) -> tuple[int, int, torch.device]:
    """Initialise the default process group from torchrun's environment -> (rank, world_size, device).

    ``backend``: nccl when CUDA is available, else gloo. GPU ranks use ``cuda:LOCAL_RANK``. The long default timeout
    lets fast ranks wait at a barrier while slow ranks still encode (NCCL's own default is 10 minutes).
    Already initialised -> nothing is re-initialised. Without torchrun variables: a one-process group is not
    created and (0, 1, device) is returned.
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if _pg_world():
        return dist.get_rank(), dist.get_world_size(), device
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, device
    backend = backend or ("nccl" if cuda else "gloo")
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size(), device


def _barrier() -> None:
    if _pg_world():
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------------
# distributed caching


def build_cache_distributed(backbone: Backbone, texts: Sequence[str], out_dir: str | os.PathLike, *,
                            rank: int | None = None, world_size: int | None = None, batch_size: int = 32,
                            shard_tokens: int = 1_000_000, store_dtype: str = "float16", show_progress: bool = True,
                            overwrite: bool = False, extra_meta: dict | None = None) -> TokenCache | None:
    """Encode this rank's shards of the global plan; with a process group also merge -> the complete cache.

    Every rank must pass the same ``texts`` (same order) and settings. Returns the opened cache on every rank when
    a process group is initialised (rank 0 merges after a barrier), else None on ranks of a world larger than one
    (run :func:`merge_cache` once all ranks are done). Rerunning resumes each rank at its first missing shard.
    """
    rank, world_size = resolve_rank(rank, world_size)
    kw = dict(batch_size=batch_size, shard_tokens=shard_tokens, store_dtype=store_dtype, extra_meta=extra_meta)
    if world_size == 1:
        return build_cache(backbone, texts, out_dir, show_progress=show_progress, overwrite=overwrite, **kw)
    pg = _pg_world() == world_size
    if overwrite:
        if not pg:
            raise ValueError("overwrite=True with several ranks needs an initialised process group (so that only "
                             "rank 0 deletes, before anyone writes); delete the old cache files first instead")
        if rank == 0:
            _remove_cache_files(Path(out_dir))
        _barrier()
    build_cache(backbone, texts, out_dir, rank=rank, world_size=world_size, show_progress=show_progress, **kw)
    if not pg:
        log.info("rank %d/%d finished its shards of %s; merge with merge_cache() once all ranks are done",
                 rank, world_size, out_dir)
        return None
    _barrier()
    cache = merge_cache(backbone, texts, out_dir, show_progress=False, **kw) if rank == 0 else None
    _barrier()
    return cache if rank == 0 else open_cache(out_dir, verify=False)


def merge_cache(backbone: Backbone, texts: Sequence[str], out_dir: str | os.PathLike, *, batch_size: int = 32,
                shard_tokens: int = 1_000_000, store_dtype: str = "float16", show_progress: bool = True,
                extra_meta: dict | None = None) -> TokenCache:
    """Write the index of a distributed build (one process): adopt all ranks' shards, encode any still missing.

    This is a single-process :func:`build_cache` resume, so a crashed rank's missing shards are simply computed
    here; the backbone runs only for those (it is needed for the tokenizer and the fingerprint anyway).
    """
    return build_cache(backbone, texts, out_dir, batch_size=batch_size, shard_tokens=shard_tokens,
                       store_dtype=store_dtype, show_progress=show_progress, extra_meta=extra_meta)


def iter_texts_streaming(path_or_name: str, text_col: str = "text", rank: int | None = None,
                         world_size: int | None = None, split: str = "train", **load_kwargs) -> Iterator[str]:
    """Stream this rank's part of a (huge) dataset's ``text_col`` without loading it: ``datasets`` streaming mode.

    ``path_or_name``: a hub id, or a local ``.json``/``.jsonl``/``.csv``/``.parquet``/``.txt`` file (or a list of
    such files via ``data_files=``). ``split_dataset_by_node`` gives each rank whole files when the number of files
    is divisible by ``world_size``, else every ``world_size``-th example: the ranks' parts are disjoint and cover
    the data. Each rank can then cache its part into its own folder (e.g. ``out/rank-00003``).
    """
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    rank, world_size = resolve_rank(rank, world_size)
    builders = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet",
                ".txt": "text"}
    p = Path(path_or_name).expanduser()
    if p.suffix.lower() in builders or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
        if p.suffix.lower() not in builders:
            raise ValueError(f"{p}: unknown extension {p.suffix!r}; use one of {sorted(builders)}")
        ds = load_dataset(builders[p.suffix.lower()], data_files=str(p), split=split, streaming=True, **load_kwargs)
    else:
        ds = load_dataset(path_or_name, split=split, streaming=True, **load_kwargs)
    ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    for i, ex in enumerate(ds):
        if i == 0 and text_col not in ex:
            raise ValueError(f"{path_or_name}: no column {text_col!r}; columns: {sorted(ex)}")
        yield ex[text_col]
