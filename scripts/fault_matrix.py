"""Fault-injection matrix of issue #15 ("never silently wrong, never lose a user's file").

Runs every case through the command line where a user meets it (in-process ``glotpool.cli.main`` for speed,
real subprocesses for signals and locks) on the real MiniLM preset with tiny data, and prints one line per case::

    case                         expected                                    observed                        ok

    python scripts/fault_matrix.py [--work DIR] [--only NAME,...]

Exit status 0 when every case is ok (and no user file was lost). ``tests/test_reliability.py`` runs the same cases.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "pang-lee" / "sentences.csv"
DATA_600 = ROOT / "tests" / "data" / "pang-lee" / "sentences-600.csv"
POOLER = "glot:hidden_dim=16,num_layers=1"
TRAIN = ["--epochs", "1", "--batch-size", "16", "--quiet"]


@dataclass
class Result:
    case: str
    expected: str
    observed: str
    ok: bool | None  # None = skipped


CASES: list[tuple[str, str, Callable]] = []


def case(name: str, expected: str):
    def deco(fn):
        CASES.append((name, expected, fn))
        return fn
    return deco


# ------------------------------------------------------------------------------------------------ helpers


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args) -> tuple[int, str]:
    """``glotpool ARGS`` in this process -> (exit code, stderr)."""
    from glotpool.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    return rc, err.getvalue()


def spawn(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glotpool", *map(str, args)], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def one_line_error(rc: int, err: str, *needles: str) -> tuple[bool, str]:
    """A user error: non-zero exit, no traceback, the last stderr line names every needle."""
    line = last_line(err)
    ok = rc != 0 and "Traceback" not in err and all(n in line for n in needles)
    return ok, f"rc={rc}: {line[:150]}"


def write_csv(path: Path, rows, header=("label", "text")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["label"], r["text"]) for r in csv.DictReader(f)]


class Work:
    """Shared fixtures: tiny train/test files and one trained model (trained once)."""

    def __init__(self, root: Path):
        self.root = root
        rows = read_rows(DATA)
        pos = [r for r in rows if r[0] == "positive"]
        neg = [r for r in rows if r[0] == "negative"]
        self.train = write_csv(root / "train.csv", pos[:20] + neg[:20])
        self.test = write_csv(root / "test.csv", pos[20:30] + neg[20:30])
        self.dev = write_csv(root / "dev.csv", pos[30:40] + neg[30:40])
        flip = {"positive": "negative", "negative": "positive"}
        self.train_flipped = write_csv(root / "train-flipped.csv", [(flip[l], t) for l, t in pos[:20] + neg[:20]])
        self.run = root / "m"
        rc, err = cli("train", "--train", self.train, "--dev", self.dev, "--test", self.test, "--out", self.run,
                      "--pooler", POOLER, *TRAIN)
        if rc != 0:
            raise RuntimeError(f"set-up training failed: {err}")
        self.model = self.run / "model"

    def copy_model(self, name: str) -> Path:
        dst = self.root / name
        shutil.copytree(self.model, dst)
        return dst

    def fresh(self, name: str) -> Path:
        d = self.root / name
        d.mkdir()
        return d


def predict(model, inp, out, *extra) -> tuple[int, str]:
    return cli("predict", "--model", model, "--input", inp, "--out", out, "--quiet", *extra)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------------------------------ 1-4: silently wrong


@case("retrain_flipped_labels", "reruns (says why), new head weights")
def _(w: Work):
    out = w.root / "retrain"
    shutil.copytree(w.run, out)
    before = (out / "model" / "head" / "head.safetensors").read_bytes()
    rc, err = cli("train", "--train", w.train_flipped, "--dev", w.dev, "--test", w.test, "--out", out, "--pooler",
                  POOLER, *TRAIN)
    after = (out / "model" / "head" / "head.safetensors").read_bytes()
    said = "rerunning" in err and "data" in err
    return rc == 0 and said and before != after, f"rc={rc}, said why={said}, weights changed={before != after}"


@case("corrupt_weights_byte", "exit 2 naming model.safetensors, no output")
def _(w: Work):
    m = w.copy_model("corrupt")
    f = m / "pooler" / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    out = w.root / "corrupt.csv"
    rc, err = predict(m, w.test, out)
    ok, obs = one_line_error(rc, err, "model.safetensors", "corrupt")
    return ok and not out.exists(), obs


@case("nan_weights_predict", "exit 2 with row numbers; --on-nonfinite nan: no labels")
def _(w: Work):
    import torch

    from glotpool.training.heads import TaskHead

    m = w.copy_model("nanhead")
    head = TaskHead.from_pretrained(m / "head")
    with torch.no_grad():
        head.linear.weight.fill_(float("nan"))
    head.save_pretrained(m / "head")  # consistent checksum: the weights themselves are bad
    out = w.root / "nan.csv"
    rc, err = predict(m, w.test, out)
    ok, obs = one_line_error(rc, err, "non-finite", "row")
    rc2, _ = predict(m, w.test, out, "--on-nonfinite", "nan")
    labels = [r["label"] for r in csv.DictReader(open(out))] if out.exists() else ["missing"]
    ok2 = rc2 == 0 and all(lab == "" for lab in labels)
    return ok and ok2, f"{obs}; nan mode rc={rc2}, labels empty={ok2}"


@case("cache_texts_reordered", "exit 2 naming texts.json")
def _(w: Work):
    c = w.root / "cache-reordered"
    shutil.copytree(w.run / "cache", c)
    texts = json.loads((c / "texts.json").read_text())
    (c / "texts.json").write_text(json.dumps(texts[::-1]))
    rc, err = cli("train", "--train", w.train, "--dev", w.dev, "--test", w.test, "--out", w.root / "m-reordered",
                  "--cache-dir", c,
                  "--pooler", "mean", *TRAIN)
    return one_line_error(rc, err, "texts.json")


def _edit_pooler_config(w: Work, name: str, **changes) -> tuple[int, str]:
    m = w.copy_model(name)
    cfg = m / "pooler" / "config.json"
    meta = json.loads(cfg.read_text())
    meta["config"].update(changes)
    cfg.write_text(json.dumps(meta))
    return predict(m, w.test, w.root / f"{name}.csv")


@case("config_tau_edited", "exit 2: weights saved under another config")
def _(w: Work):
    return one_line_error(*_edit_pooler_config(w, "tau-edit", tau=0.2), "another config", "tau")


@case("config_hidden_dim_edited", "exit 2: another config (no size-mismatch traceback)")
def _(w: Work):
    return one_line_error(*_edit_pooler_config(w, "dim-edit", hidden_dim=32), "another config", "hidden_dim")


@case("config_tau_string", "exit 2: tau must be float")
def _(w: Work):
    return one_line_error(*_edit_pooler_config(w, "tau-str", tau="0.6"), "tau", "float")


@case("bad_pooler_values", "exit 2 before the backbone loads / cache is built")
def _(w: Work):
    obs = []
    ok = True
    for spec in ("glot:tau=abc", "glot:tau=nan", "glot:hidden_dim=0", "glot:readout_hidden=0", "glot:center=yes"):
        out = w.root / f"bad-{len(obs)}"
        t0 = time.perf_counter()
        rc, err = cli("train", "--train", w.train, "--test", w.test, "--out", out, "--pooler", spec, *TRAIN)
        good, line = one_line_error(rc, err, "--pooler")
        good = good and not out.exists()
        ok &= good
        obs.append(f"{spec.split(':')[1]}:{'ok' if good else line}({time.perf_counter() - t0:.1f}s)")
    return ok, " ".join(obs)


# ------------------------------------------------------------------------------------------------ 5-8: data loss


@case("export_st_foreign_dir", "exit 2, user file kept")
def _(w: Work):
    d = w.fresh("export-user")
    (d / "thesis.txt").write_text("precious")
    rc, err = cli("export-st", "--model", w.model, "--out", d)
    ok, obs = one_line_error(rc, err, str(d), "--overwrite")
    return ok and (d / "thesis.txt").read_text() == "precious", obs


@case("train_model_foreign_dir", "exit 2 before training, user file kept")
def _(w: Work):
    out = w.root / "train-user"
    (out / "model").mkdir(parents=True)
    (out / "model" / "notes.txt").write_text("precious")
    rc, err = cli("train", "--train", w.train, "--test", w.test, "--out", out, "--pooler", "mean", *TRAIN)
    ok, obs = one_line_error(rc, err, "--overwrite")
    return ok and (out / "model" / "notes.txt").read_text() == "precious" and not (out / "cache").exists(), obs


@case("predict_out_is_input", "exit 2 for same path, symlink, hard link; input intact")
def _(w: Work):
    d = w.fresh("same")
    inp = d / "x.csv"
    shutil.copy(w.test, inp)
    before = inp.read_bytes()
    (d / "link.csv").symlink_to(inp)
    os.link(inp, d / "hard.csv")
    res = [one_line_error(*predict(w.model, inp, out), "input")[0] for out in (inp, d / "link.csv", d / "hard.csv")]
    return all(res) and inp.read_bytes() == before, f"refused={res}, input intact={inp.read_bytes() == before}"


@case("cache_two_writers", "both exit 0 (second waits), one valid cache")
def _(w: Work):
    out = w.root / "locked-cache"
    procs = [spawn("cache", "--data", w.train, "--out", out, "--quiet") for _ in range(2)]
    res = [p.communicate(timeout=300) for p in procs]
    rcs = [p.returncode for p in procs]
    from glotpool.states.cache import open_cache

    try:
        cache = open_cache(out, verify=True)
        valid = len(cache) == 40
    except Exception as e:  # noqa: BLE001
        valid = f"{type(e).__name__}: {e}"
    waited = any("waiting" in err for _, err in res)
    return rcs == [0, 0] and valid is True, f"rcs={rcs}, valid={valid}, second waited={waited}"


@case("sigkill_encode_tempfile", "killed encode leaves a temp; the next run removes it")
def _(w: Work):
    d = w.fresh("killed")
    out = d / "emb.npy"
    p = spawn("encode", "--model", w.model, "--input", DATA_600, "--out", out, "--batch-size", "4", "--quiet")
    seen = []
    t0 = time.time()
    while time.time() - t0 < 120 and p.poll() is None:
        seen = list(d.glob(".emb.npy.*.tmp"))
        if seen:
            time.sleep(0.5)
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    left = list(d.glob(".emb.npy.*.tmp"))
    rc, err = cli("encode", "--model", w.model, "--input", w.test, "--out", out, "--quiet")
    after = list(d.glob(".emb.npy.*.tmp"))
    return bool(left) and rc == 0 and not after, f"temp after kill={len(left)}, rerun rc={rc}, temp after rerun={len(after)}"


@case("stale_cache_shard_temp", "a dead writer's shard temp is removed by the next cache run")
def _(w: Work):
    out = w.fresh("stale-cache")
    stale = out / f".shard-00000.safetensors.{dead_pid()}.abcd.tmp"
    stale.write_bytes(b"\0" * 4096)
    rc, err = cli("cache", "--data", w.test, "--out", out, "--quiet")
    return rc == 0 and not stale.exists(), f"rc={rc}, stale temp left={stale.exists()}"


# ------------------------------------------------------------------------------------------------ 9-11: messages


@case("truncated_safetensors_legacy", "exit 2 naming head.safetensors (no checksum recorded)")
def _(w: Work):
    m = w.copy_model("truncated")
    cfg = m / "head" / "head.json"
    meta = json.loads(cfg.read_text())
    meta.pop("weights_sha256", None)
    cfg.write_text(json.dumps(meta))
    f = m / "head" / "head.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    return one_line_error(*predict(m, w.test, w.root / "trunc.csv"), "head.safetensors")


@case("empty_safetensors", "exit 2 naming model.safetensors")
def _(w: Work):
    m = w.copy_model("emptyweights")
    (m / "pooler" / "model.safetensors").write_bytes(b"")
    return one_line_error(*predict(m, w.test, w.root / "empty.csv"), "model.safetensors")


@case("broken_encoder_json", "exit 2 naming encoder.json")
def _(w: Work):
    m = w.copy_model("brokenjson")
    (m / "encoder.json").write_text('{"format": "glotpool-encoder", ')
    return one_line_error(*predict(m, w.test, w.root / "bj.csv"), "encoder.json")


@case("out_parent_is_file", "exit 2 before the model loads")
def _(w: Work):
    f = w.root / "afile"
    f.write_text("x")
    return one_line_error(*cli("encode", "--model", w.model, "--input", w.test, "--out", f / "emb.npy"), "is a file")


@case("out_is_folder", "exit 2 before the model loads")
def _(w: Work):
    d = w.fresh("dir.npy")
    t0 = time.perf_counter()
    ok, obs = one_line_error(*cli("encode", "--model", w.model, "--input", w.test, "--out", d), "folder")
    return ok, f"{obs} ({time.perf_counter() - t0:.1f}s)"


@case("read_only_out_folder", "exit 2 before the model loads")
def _(w: Work):
    if os.geteuid() == 0:
        return None, "skipped: running as root (permissions are not enforced)"
    d = w.fresh("ro")
    d.chmod(0o500)
    try:
        return one_line_error(*cli("encode", "--model", w.model, "--input", w.test, "--out", d / "e.npy"),
                              "not writable")
    finally:
        d.chmod(0o700)


@case("latin1_input", "exit 2 naming the file + --encoding; works with --encoding latin-1")
def _(w: Work):
    f = w.root / "latin1.csv"
    f.write_bytes("text\nun film très réussi .\ncafé crème .\n".encode("latin-1"))
    ok, obs = one_line_error(*cli("encode", "--model", w.model, "--input", f, "--out", w.root / "l1.npy"),
                             str(f), "--encoding")
    rc2, _ = cli("encode", "--model", w.model, "--input", f, "--out", w.root / "l1.npy", "--encoding", "latin-1",
                 "--quiet")
    return ok and rc2 == 0, f"{obs}; with --encoding latin-1 rc={rc2}"


@case("ctrl_c_train", "exit 130, one line: interrupted; rerun the same command to resume")
def _(w: Work):
    out = w.root / "interrupted"
    p = spawn("train", "--train", w.train, "--dev", w.dev, "--test", w.test, "--out", out, "--cache-dir",
              w.run / "cache",
              "--pooler", "mean", "--epochs", "100000", "--patience", "0", "--quiet")
    time.sleep(20)  # imports, backbone, the (reused) cache: then it is in the epoch loop
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    line = last_line(err)
    ok = p.returncode == 130 and "Traceback" not in err and "rerun the same command to resume" in line
    return ok, f"rc={p.returncode}: {line[:100]}"


@case("one_row_train", "exit 2: pass --dev")
def _(w: Work):
    f = write_csv(w.root / "one.csv", [("positive", "a fine film .")])
    return one_line_error(*cli("train", "--train", f, "--test", w.test, "--out", w.root / "one", *TRAIN), "--dev")


@case("hint_names_flags", "exit 2 naming --train/--test/--data flags")
def _(w: Work):
    return one_line_error(*cli("train", "--train", w.train, "--out", w.root / "noflags", *TRAIN), "--test", "--data")


@case("warn_leakage_and_label_clash", "exit 0, warnings count leaked and clashing texts")
def _(w: Work):
    rows = read_rows(w.train)
    train = write_csv(w.root / "leaky-train.csv", rows + [("negative", rows[0][1])])
    test = write_csv(w.root / "leaky-test.csv", rows[:5] + read_rows(w.test)[:5])
    rc, err = cli("train", "--train", train, "--dev", w.dev, "--test", test, "--out", w.root / "leaky", "--pooler",
                  "mean", *TRAIN)
    leak = "5 of 10 test examples also occur in train" in err
    clash = "1 train text(s) occur with two or more different labels" in err
    return rc == 0 and leak and clash, f"rc={rc}, leakage warned={leak}, label clash warned={clash}"


@case("jsonl_non_string", "exit 2 naming the line")
def _(w: Work):
    f = w.root / "bad.jsonl"
    f.write_text('{"text": "fine ."}\n{"text": ["a", "list"]}\n')
    return one_line_error(*cli("encode", "--model", w.model, "--input", f, "--out", w.root / "j.npy"), "line 2")


# ------------------------------------------------------------------------------------------------ runner


def run_matrix(work: Path | None = None, only: set[str] | None = None, print_lines: bool = True) -> list[Result]:
    os.environ.update({k: v for k, v in env().items() if k != "PYTHONPATH"})
    work = Path(work or tempfile.mkdtemp(prefix="glotpool-faults-"))
    os.environ.setdefault("GLOTPOOL_HOME", str(work / "home"))
    work.mkdir(parents=True, exist_ok=True)
    w = Work(work)
    results = []
    for name, expected, fn in CASES:
        if only and name not in only:
            continue
        try:
            ok, observed = fn(w)
        except Exception as e:  # noqa: BLE001  a case that crashes is a bad case
            ok, observed = False, f"crashed: {type(e).__name__}: {str(e)[:120]}"
        r = Result(name, expected, observed, ok)
        results.append(r)
        if print_lines:
            mark = "skip" if ok is None else ("ok" if ok else "bad")
            print(f"{name:30s} | {expected:58s} | {observed[:160]:160s} | {mark}", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--only", default=None, help="comma-separated case names")
    args = ap.parse_args()
    results = run_matrix(args.work, set(args.only.split(",")) if args.only else None)
    bad = [r.case for r in results if r.ok is False]
    print(f"{len(results)} cases: {sum(r.ok is True for r in results)} ok, {len(bad)} bad, "
          f"{sum(r.ok is None for r in results)} skipped" + (f" ({', '.join(bad)})" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
