"""``glotpool predict``: labels (+ class probabilities) of a file's texts with a saved classifier, streamed to CSV.

Output columns: ``row`` (1-based data row) or ``id`` (``--id-col``), ``label``, then ``p_<class>`` per class.
STS models write ``similarity`` (cosine) and, when the training score range is known, ``score`` (cosine mapped
back to that range). Input streaming, empty-text and truncation handling as in ``glotpool encode``: an empty text
gets an empty label and empty probabilities (reported), or ``--on-empty error`` rejects the file. Written atomically.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from glotpool.cli.encode import (TruncationTally, add_model_args, as_text, check_empty, check_finite, check_output,
                                 iter_chunks, load_encoder, scan_table)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="labels and class probabilities of a file's texts with a trained classifier (CSV)",
        description="Classify the --text-col (and --text-col-2 for pair tasks) of a CSV/TSV/JSONL file with a "
                    "saved model (glotpool train's OUT/model). Writes row/id, label and p_<class> columns "
                    "(STS models: similarity, score). Streamed input, atomic output; empty texts are reported.")
    add_model_args(p)
    p.add_argument("--text-col-2", default=None, help="second sentence column (pair / STS models)")
    p.add_argument("--out", required=True, help="output .csv")
    p.set_defaults(func=run)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def predict_table(encoder, input_path, out, text_col: str = "text", text_col_2: str | None = None,
                  id_col: str | None = None, batch_size: int = 32, chunk_size: int = 10_000, dtype=None,
                  on_empty: str = "nan", show_progress: bool = True, on_nonfinite: str = "error",
                  encoding: str = "utf-8-sig") -> dict:
    """Predict every row of ``input_path`` into the CSV ``out``; returns a report dict."""
    import torch
    from tqdm.auto import tqdm

    from glotpool.io_utils import atomic_path

    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: predictions are written as .csv")
    sts = encoder.task_type == "sts"
    if not sts:
        encoder._classifier()  # ValueError now if there is no classifier head
    pair = sts or encoder.head.is_pair
    if pair and not text_col_2:
        raise ValueError(f"this model ({encoder.task_type}) compares two sentences: give --text-col-2")
    if not pair and text_col_2:
        raise ValueError("this model classifies single sentences: drop --text-col-2")
    text_cols = [text_col] + ([text_col_2] if pair else [])
    check_output(out, [input_path])
    scan = scan_table(input_path, text_cols, id_col, chunk_size, encoding)
    check_empty(scan, input_path, on_empty, "an empty label")
    if sts:
        names = []
        value_cols = ["similarity"] + (["score"] if encoder.score_range else [])
    else:
        names = encoder.label_names or [str(i) for i in range(encoder.head.config.num_labels)]
        value_cols = ["label"] + [f"p_{c}" for c in names]
    trunc = TruncationTally(encoder.backbone.config.max_length)
    device = encoder.backbone.device
    counts: dict[str, int] = {}
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f, \
            tqdm(total=scan.rows * len(text_cols), desc="predict", unit="text",
                 disable=not show_progress or None) as bar:  # None: off when stderr is not a terminal
        w = csv.writer(f)
        w.writerow(["id" if id_col else "row"] + value_cols)
        for start, chunk in iter_chunks(input_path, text_cols + ([id_col] if id_col else []), chunk_size,
                                        encoding):
            cols = [[as_text(t) for t in chunk[c]] for c in text_cols]
            n = len(cols[0])
            keep = [j for j in range(n) if all(col[j] for col in cols)]
            values: dict[int, list[str]] = {}
            if keep:
                zs = []
                for col in cols:
                    kept = [col[j] for j in keep]
                    trunc.add(encoder.truncation_report(kept), [start + j + 1 for j in keep])
                    zs.append(encoder._embed(kept, batch_size, dtype, bar).to(device))
                with torch.inference_mode():
                    rownums = [start + j + 1 for j in keep]
                    if sts:
                        sim = torch.nn.functional.cosine_similarity(zs[0], zs[1], dim=-1).cpu()
                        bad = set(check_finite(sim[:, None], rownums, on_nonfinite, "similarities"))
                        rows = [[_fmt(s)] for s in sim.tolist()]
                        if encoder.score_range:
                            lo, hi = encoder.score_range
                            rows = [r + [_fmt(lo + s * (hi - lo))] for r, s in zip(rows, sim.tolist())]
                    else:
                        logits = encoder.head(zs[0], zs[1] if pair else None).float().cpu()
                        bad = set(check_finite(logits, rownums, on_nonfinite, "logits"))
                        proba = torch.softmax(logits, -1)
                        rows = []
                        for i, p in enumerate(proba.tolist()):
                            if i in bad:  # --on-nonfinite nan: no label for a row the model cannot score
                                rows.append([""] + ["nan"] * len(p))
                                continue
                            label = names[max(range(len(p)), key=p.__getitem__)]
                            counts[label] = counts.get(label, 0) + 1
                            rows.append([label] + [_fmt(x) for x in p])
                values = dict(zip(keep, rows))
            bar.update((n - len(keep)) * len(text_cols))
            for j in range(n):
                rid = (as_text(chunk[id_col][j]) if id_col else start + j + 1)
                w.writerow([rid] + values.get(j, [""] * len(value_cols)))
    trunc.print()
    return {"rows": scan.rows, "empty": scan.empty, "empty_rows": scan.empty_rows, "label_counts": counts,
            "truncation": trunc.as_dict(), "out": str(out)}


def run(args: argparse.Namespace) -> int:
    if Path(args.out).suffix.lower() != ".csv":
        raise ValueError(f"--out {args.out}: predictions are written as .csv")
    check_output(args.out, [args.input])  # before the model loads
    encoder = load_encoder(args)
    rep = predict_table(encoder, args.input, args.out, text_col=args.text_col, text_col_2=args.text_col_2,
                        id_col=args.id_col, batch_size=args.batch_size, chunk_size=args.chunk_size,
                        dtype=args.dtype, on_empty=args.on_empty, show_progress=not args.quiet,
                        on_nonfinite=args.on_nonfinite, encoding=args.encoding)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(rep["label_counts"].items()))
    print(f"predicted {rep['rows'] - rep['empty']} of {rep['rows']} rows of {args.input} -> {args.out}"
          + (f" ({counts})" if counts else ""), file=sys.stderr)
    return 0
