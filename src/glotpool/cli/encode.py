"""``glotpool encode``: sentence vectors of a text column with a saved Encoder, streamed to .npy or .parquet.

Input is STREAMED: the CSV / TSV / JSONL file is read in chunks of ``--chunk-size`` rows (never whole), twice:

1. a cheap first pass counts rows and finds empty texts (and checks the columns), so that ``--on-empty error``
   rejects the file before any model runs and the ``.npy`` can be allocated at its final size;
2. the second pass encodes chunk by chunk into ``numpy.lib.format.open_memmap`` (``.npy``) or a
   ``pyarrow.parquet.ParquetWriter`` (``.parquet``), both on a temporary file renamed into place at the end
   (atomic: an interrupted run leaves no partial output).

Rows: every data record counts (header not counted, 1-based, like glotpool.data's messages), blank lines included,
so ``.npy`` row ``i`` is data row ``i + 1``. Empty texts (empty or whitespace cells, blank lines, JSONL records
without the column) are never dropped: they are REPORTED (count + first row numbers) and get a NaN vector
(``--on-empty nan``, default: NaN propagates loudly where a zero vector would pass silently as "similar to
nothing"), or the whole file is rejected (``--on-empty error``). Texts longer than the backbone's ``max_length``
tokens are truncated (as in training) and reported.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from glotpool.io_utils import ROWS_SHOWN, rows_str



# ----------------------------------------------------------------------------------------------------------------
# streaming table reader


def _table_format(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".csv", ".tsv", ".tab"):
        return ext[1:].replace("tab", "tsv")
    raise ValueError(f"{path}: unknown input extension {ext!r}; use .csv, .tsv or .jsonl")


def iter_chunks(path: str | Path, columns: list[str], chunk_size: int = 10_000, encoding: str = "utf-8-sig"
                ) -> Iterator[tuple[int, dict[str, list]]]:
    """Stream ``path`` -> ``(first row index (0-based), {column: [values]})`` chunks of ``chunk_size`` rows.

    Missing cells (blank lines, JSONL records without the key) are ``None``. CSV/TSV: a missing column is a
    ValueError listing the header; ragged rows are a ValueError naming the row. JSONL: one object per line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    fmt = _table_format(path)
    try:
        import codecs

        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"--encoding {encoding!r}: unknown text encoding (e.g. utf-8, latin-1, cp1252)") from None
    with open(path, encoding=encoding, newline="" if fmt != "jsonl" else None) as f:
        if fmt == "jsonl":
            records = _jsonl_records(f, path, columns)
        else:
            records = _delimited_records(f, path, columns, fmt)
        start, chunk = 0, {c: [] for c in columns}
        try:
            for rec in records:
                for c in columns:
                    chunk[c].append(None if rec is None else rec.get(c))
                if len(chunk[columns[0]]) == chunk_size:
                    yield start, chunk
                    start, chunk = start + chunk_size, {c: [] for c in columns}
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not valid {encoding.replace('-sig', '')} text (byte {e.object[e.start:e.end]!r} "
                             f"near data row {start + len(chunk[columns[0]]) + 1}); pass the file's encoding, "
                             f"e.g. --encoding latin-1, or re-save it as UTF-8") from None
        if chunk[columns[0]]:
            yield start, chunk


def _delimited_records(f, path: Path, columns: list[str], fmt: str) -> Iterator[dict | None]:
    # TSV without quoting, like glotpool.data.read_table (GLUE's TSVs hold bare quote characters)
    reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t",
                        quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path}: file is empty (no header row)")
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} not found; the columns are {header} (pick them with "
                         f"--text-col / --text-col-2 / --id-col)")
    for i, row in enumerate(reader, 1):
        if not row:
            yield None  # a blank line: a row whose texts are empty (reported, not skipped)
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}: data row {i} has {len(row)} fields but the header has {len(header)} "
                             f"({header}); check the delimiter and quoting")
        yield dict(zip(header, row))


def _jsonl_records(f, path: Path, columns: list[str] = ()) -> Iterator[dict | None]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            yield None
            continue
        if lineno == 1 and line.lstrip().startswith("["):
            raise ValueError(f"{path}: a JSON array cannot be streamed; write one JSON object per line (JSON Lines)")
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {lineno} is not a JSON object")
        for c in columns:
            if isinstance(rec.get(c), (list, dict)):
                raise ValueError(f"{path}: line {lineno}: {c!r} is a JSON {type(rec[c]).__name__}, not a text; "
                                 f"give a string (or pick another column)")
        yield rec


def as_text(v) -> str:
    return "" if v is None else str(v).strip()


@dataclass
class Scan:
    """First pass over the input: row count and empty texts (1-based data rows)."""
    rows: int = 0
    empty: int = 0
    empty_rows: list[int] = field(default_factory=list)  # the first few
    seen: set = field(default_factory=set)  # JSONL: columns present in at least one record


def scan_table(path, text_cols: list[str], id_col: str | None, chunk_size: int, encoding: str = "utf-8-sig") -> Scan:
    cols = text_cols + ([id_col] if id_col else [])
    s = Scan()
    for start, chunk in iter_chunks(path, cols, chunk_size, encoding):
        n = len(chunk[cols[0]])
        for j in range(n):
            if any(chunk[c][j] is not None for c in cols):
                s.seen.update(c for c in cols if chunk[c][j] is not None)
            if any(not as_text(chunk[c][j]) for c in text_cols):
                s.empty += 1
                if len(s.empty_rows) < ROWS_SHOWN:
                    s.empty_rows.append(start + j + 1)
        s.rows += n
    if s.rows == 0:
        raise ValueError(f"{path}: no data rows")
    if _table_format(Path(path)) == "jsonl":
        never = [c for c in cols if c not in s.seen]
        if never:
            raise ValueError(f"{path}: no record has the key(s) {never}; pick the columns with --text-col / "
                             f"--text-col-2 / --id-col")
    return s


def check_empty(scan: Scan, path, on_empty: str, what: str) -> None:
    """Reject (``error``) or announce (``nan``) the empty texts the scan found."""
    if not scan.empty:
        return
    rows = rows_str(scan.empty_rows, scan.empty)
    if on_empty == "error":
        raise ValueError(f"{path}: {scan.empty} empty text(s) at data row(s) {rows}; fix or remove them, or pass "
                         f"--on-empty nan to give them {what}")
    print(f"warning: {scan.empty} of {scan.rows} rows have an empty text (data rows {rows}); they get {what}",
          file=sys.stderr)


class TruncationTally:
    """Over-long texts over all chunks (1-based data rows)."""

    def __init__(self, max_length: int):
        self.max_length, self.count, self.rows, self.longest = max_length, 0, [], 0

    def add(self, report: dict, row_numbers: list[int]) -> None:
        self.count += report["truncated"]
        self.longest = max(self.longest, report["longest"])
        self.rows += [row_numbers[i] for i in report["indices"][:ROWS_SHOWN - len(self.rows)]]

    def print(self) -> None:
        if self.count:
            print(f"note: {self.count} text(s) exceed max_length={self.max_length} tokens and were truncated "
                  f"(data rows {rows_str(self.rows, self.count)}; longest {self.longest} tokens)", file=sys.stderr)

    def as_dict(self) -> dict:
        return {"max_length": self.max_length, "truncated": self.count, "first_rows": self.rows,
                "longest": self.longest}


# ----------------------------------------------------------------------------------------------------------------
# loading the model


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="encoder folder (glotpool train writes OUT/model)")
    p.add_argument("--input", required=True, help="CSV / TSV (with a header) or JSONL file")
    p.add_argument("--text-col", default="text", help="text column (default: text)")
    p.add_argument("--id-col", default=None, help="column copied to the output as ids (default: row numbers)")
    p.add_argument("--backbone", default=None,
                   help="load the backbone from here instead of the stored reference (e.g. a moved folder); "
                        "it is still checked against the one the model was trained on")
    p.add_argument("--no-backbone-check", action="store_true",
                   help="use a backbone that differs from the trained one (at your own risk)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=10_000, help="rows read (and held) at a time")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="run the backbone under autocast in this dtype (slightly other states); auto = bfloat16 on "
                        "GPUs and on CPUs with AVX512-BF16/AMX, else the backbone's own dtype")
    p.add_argument("--on-empty", choices=["nan", "error"], default="nan",
                   help="empty texts: NaN outputs (default, reported) or reject the file")
    p.add_argument("--on-nonfinite", choices=["error", "nan"], default="error",
                   help="a text whose vector / logits come out NaN or Inf (corrupt weights?): stop with its row "
                        "numbers (default) or write NaN for it (never a label)")
    p.add_argument("--encoding", default="utf-8-sig", help="text encoding of --input (default utf-8; e.g. latin-1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_output(out: str | Path, inputs=(), what: str = "--out") -> Path:
    """Refuse, before any work, an output that cannot be written or that would replace an input file
    (same path, symlink or hard link): an existing folder, a parent that is a file, a read-only parent."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{what} {out} is a folder; give a file name (e.g. {out / 'out'}{out.suffix or '.csv'})")
    for src in inputs:
        if src is not None and out.exists() and Path(src).exists() and os.path.samefile(out, src):
            raise ValueError(f"{what} {out} is the input file {src} (same file); writing it would destroy the "
                             f"input: choose another {what}")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {out}: folder {parent} is not writable; choose another {what}")
    return out


def check_finite(values, row_numbers, on_nonfinite: str, what: str):
    """Row positions of ``values [n, d]`` that are NaN/Inf anywhere; ValueError (naming the data rows) unless
    ``on_nonfinite == 'nan'`` (then those rows are returned, to be written as NaN)."""
    import torch

    bad = (~torch.isfinite(torch.as_tensor(values)).all(-1)).nonzero().flatten().tolist()
    if bad and on_nonfinite != "nan":
        raise ValueError(f"{len(bad)} text(s) gave non-finite {what} (NaN/Inf) at data row(s) "
                         f"{rows_str([row_numbers[i] for i in bad], len(bad))}: the model's weights are likely "
                         f"corrupt; re-copy or retrain the model (or pass --on-nonfinite nan to write NaN rows)")
    return bad


def load_encoder(args: argparse.Namespace):
    from glotpool.states.backbone import load_backbone
    from glotpool.encoder import CONFIG_NAME, Encoder, backbone_kwargs

    backbone = None
    if args.backbone:
        cfg = Path(args.model) / CONFIG_NAME
        if not cfg.is_file():
            raise FileNotFoundError(f"no encoder at {args.model}: {CONFIG_NAME} is missing")
        try:
            ref = json.loads(cfg.read_text(encoding="utf-8"))["backbone"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg} is not a valid encoder config ({type(e).__name__}: {e}); restore it from the "
                             f"model's source or re-save the model") from None
        backbone = load_backbone(args.backbone, **backbone_kwargs(ref), device=args.device)
    return Encoder.from_pretrained(args.model, backbone=backbone, device=args.device,
                                   check_backbone=not args.no_backbone_check)


# ----------------------------------------------------------------------------------------------------------------
# encode


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "encode", help="sentence vectors of a text column with a trained model (.npy or .parquet)",
        description="Encode the --text-col of a CSV/TSV/JSONL file with a saved encoder (glotpool train's "
                    "OUT/model). The input is streamed in chunks; the output is written atomically. .npy: a "
                    "[rows, dim] float32 matrix (row i = data row i+1); .parquet: columns row (or id) + embedding. "
                    "Empty texts are reported and get NaN vectors (or --on-empty error rejects the file); "
                    "over-long texts are truncated to max_length and reported.")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output file: .npy or .parquet")
    p.add_argument("--normalize", action="store_true", help="unit-length vectors")
    p.set_defaults(func=run)


def _check_out(out: Path, id_col: str | None) -> str:
    ext = out.suffix.lower()
    if ext not in (".npy", ".parquet"):
        raise ValueError(f"--out {out}: unknown extension {ext!r}; use .npy or .parquet")
    if ext == ".npy" and id_col:
        raise ValueError("--id-col needs .parquet output (a .npy holds only the matrix: row i = data row i+1)")
    if ext == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ModuleNotFoundError("parquet output needs pyarrow: pip install pyarrow (or write .npy)") from None
    return ext


def encode_table(encoder, input_path, out, text_col: str = "text", id_col: str | None = None,
                 batch_size: int = 32, chunk_size: int = 10_000, normalize: bool = False, dtype=None,
                 on_empty: str = "nan", show_progress: bool = True, on_nonfinite: str = "error",
                 encoding: str = "utf-8-sig") -> dict:
    """Encode a file's text column into ``out`` (.npy / .parquet); returns a report dict (see the module doc)."""
    import torch
    from tqdm.auto import tqdm

    from glotpool.io_utils import atomic_path

    out = Path(out)
    ext = _check_out(out, id_col)
    check_output(out, [input_path])
    scan = scan_table(input_path, [text_col], id_col, chunk_size, encoding)
    check_empty(scan, input_path, on_empty, "NaN vectors")
    trunc = TruncationTally(encoder.backbone.config.max_length)
    dim, done = encoder.dim, 0
    with atomic_path(out) as tmp, tqdm(total=scan.rows, desc="encode", unit="text",
                                       disable=not show_progress or None) as bar:  # None: off when not a terminal
        if ext == ".npy":
            sink = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(scan.rows, dim))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            id_field = pa.field("id", pa.string()) if id_col else pa.field("row", pa.int64())
            schema = pa.schema([id_field, pa.field("embedding", pa.list_(pa.float32(), dim))])
            sink = pq.ParquetWriter(str(tmp), schema)
        for start, chunk in iter_chunks(input_path, [text_col] + ([id_col] if id_col else []), chunk_size,
                                        encoding):
            texts = [as_text(t) for t in chunk[text_col]]
            n = len(texts)
            if start + n > scan.rows:
                raise ValueError(f"{input_path} grew while it was being encoded; run again on a finished file")
            keep = [j for j, t in enumerate(texts) if t]
            z = np.full((n, dim), np.nan, dtype=np.float32)
            if keep:
                kept = [texts[j] for j in keep]
                trunc.add(encoder.truncation_report(kept), [start + j + 1 for j in keep])
                zk = encoder._embed(kept, batch_size, dtype, bar)
                bad = check_finite(zk, [start + j + 1 for j in keep], on_nonfinite, "vectors")
                if bad:
                    zk[bad] = float("nan")
                if normalize:
                    zk = torch.nn.functional.normalize(zk, dim=-1)
                z[keep] = zk.numpy()
            bar.update(n - len(keep))
            if ext == ".npy":
                sink[start:start + n] = z
            else:
                ids = ([None if v is None else str(v) for v in chunk[id_col]] if id_col
                       else list(range(start + 1, start + n + 1)))
                flat = pa.array(z.reshape(-1), type=pa.float32())
                emb = pa.FixedSizeListArray.from_arrays(flat, dim)
                sink.write_table(pa.Table.from_arrays([pa.array(ids, type=id_field.type), emb], schema=schema))
            done += n
        if done != scan.rows:
            raise ValueError(f"{input_path} changed while it was being encoded ({scan.rows} rows, then {done})")
        if ext == ".npy":
            sink.flush()
            del sink  # close the memmap before the rename
        else:
            sink.close()
    trunc.print()
    return {"rows": scan.rows, "dim": dim, "empty": scan.empty, "empty_rows": scan.empty_rows,
            "truncation": trunc.as_dict(), "out": str(out)}


def run(args: argparse.Namespace) -> int:
    _check_out(Path(args.out), args.id_col)  # fail before loading the model
    check_output(args.out, [args.input])
    encoder = load_encoder(args)
    rep = encode_table(encoder, args.input, args.out, text_col=args.text_col, id_col=args.id_col,
                       batch_size=args.batch_size, chunk_size=args.chunk_size, normalize=args.normalize,
                       dtype=args.dtype, on_empty=args.on_empty, show_progress=not args.quiet,
                       on_nonfinite=args.on_nonfinite, encoding=args.encoding)
    print(f"encoded {rep['rows']} rows of {args.input} -> {args.out} ([{rep['rows']}, {rep['dim']}] float32"
          f"{', unit length' if args.normalize else ''}; {rep['empty']} empty -> NaN)", file=sys.stderr)
    return 0
