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
    assert "speed-up of dense over per-sentence" in text and "GFLOP/s" in text
    assert "gat   tau=0.3" in text and "gcn   tau=0.6" in text
    data = json.loads(out.read_text())
    rows = data["results"]
    assert len(rows) == 1 + 2 * 2 * 2  # mean + {gat, gcn} x {0.3, 0.6} x {dense, per_sentence}
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
