"""benchmarks/bench_pooling.py runs end to end (tiny sizes) and reports every configuration."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pooling.py"


def test_bench_pooling_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--devices", "cpu", "--convs", "gat,gcn",
                           "--json", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "speed-up over per_sentence" in text and "GFLOP/s" in text and "FLOP floor" in text
    assert "gat   tau=0.3" in text and "gcn   tau=0.6" in text
    data = json.loads(out.read_text())
    rows = [r for r in data["results"] if r["method"] != "dense_bf16"]  # only where bf16 is native
    assert len(rows) == 1 + 2 * 2 * 2  # mean + {gat, gcn} x {0.3, 0.6} x {dense, per_sentence}
    assert "reference (paper's code): skipped: no --reference-path given" in text
    for r in rows:
        assert r["fwd_ms"] > 0 and r["peak_fwd_mib"] is not None
        if r["method"] == "mean":
            assert r["fwd_bwd_ms"] is None
        else:
            assert r["fwd_bwd_ms"] > 0 and r["edges_per_token"] >= 1.0  # self-loop at least
    # a sparser threshold gives fewer edges
    dense = {(r["conv"], r["tau"]): r for r in rows if r["method"] == "dense"}
    assert dense[("gat", 0.6)]["edges_per_token"] < dense[("gat", 0.3)]["edges_per_token"]


def test_bench_pooling_rejects_bad_sizes():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--min-len", "40", "--max-len", "8"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--min-len" in proc.stderr


def test_bench_pooling_bf16_and_reference_snapshot(tmp_path):
    """--bf16 on adds the autocast rows; a snapshot folder with the adapter adds the reference rows and ratios."""
    snap = tmp_path / "GLOT"
    snap.mkdir()
    (snap / "glotpool_bench_adapter.py").write_text(
        "from reference import PerSentenceGLOT\n\ndef from_dense(pooler):\n    return PerSentenceGLOT.from_dense(pooler)\n")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--devices", "cpu", "--convs", "gcn", "--taus", "0.3",
                           "--bf16", "on", "--no-per-sentence", "--reference-path", str(snap), "--no-isolate",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speed-up over reference" in proc.stdout and "peak bf16" in proc.stdout
    methods = sorted(r["method"] for r in json.loads(out.read_text())["results"])
    assert methods == ["dense", "dense_bf16", "mean", "reference"]
    missing = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--devices", "cpu", "--convs", "gcn", "--taus",
                              "0.3", "--no-isolate", "--reference-path", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 0 and "skipped:" in missing.stdout
