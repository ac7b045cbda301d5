"""Issue #15 regression tests: never silently wrong, never lose a user's file.

Each case of ``scripts/fault_matrix.py`` is one test here: through the command line (in-process ``glotpool`` main
or real subprocesses for signals / locks), on the real MiniLM preset with tiny data. A few unit checks of the
mechanisms (config validation, run fingerprint, atomic_dir) follow.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fault_matrix", ROOT / "scripts" / "fault_matrix.py")
fm = importlib.util.module_from_spec(_spec)
sys.modules["fault_matrix"] = fm
_spec.loader.exec_module(fm)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory, glotpool_home):
    return fm.Work(tmp_path_factory.mktemp("faults"))


@pytest.mark.parametrize("name", [c[0] for c in fm.CASES])
def test_fault_case(work, name):
    _, expected, fn = next(c for c in fm.CASES if c[0] == name)
    ok, observed = fn(work)
    if ok is None:
        pytest.skip(observed)
    assert ok, f"{name}: expected {expected}; observed {observed}"


# ------------------------------------------------------------------------------------------------ mechanisms


@pytest.mark.parametrize("opts, match", [
    (dict(tau=float("nan")), "finite"), (dict(hidden_dim=0), "hidden_dim must be >= 1"),
    (dict(readout_hidden=0), "readout_hidden"), (dict(center="yes"), "center must be bool"),
    (dict(tau="0.6"), "tau must be float"), (dict(dropout=1.5), "dropout"), (dict(num_layers=True), "num_layers"),
])
def test_config_values_are_typed_and_ranged(opts, match):
    from glotpool.pooling import build_pooler

    with pytest.raises(ValueError, match=match):
        build_pooler("glot", in_dim=8, **opts)


def test_int_is_accepted_for_a_float_option():
    from glotpool.pooling import build_pooler

    assert build_pooler("glot", in_dim=8, hidden_dim=4, tau=1).config.tau == 1.0


def test_weights_checksum_and_config_metadata(tmp_path):
    from glotpool.pooling import build_pooler, load_pooler

    build_pooler("glot", in_dim=8, hidden_dim=4, tau=0.2).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert set(meta["weights_sha256"]) == {"model.safetensors"}
    meta["config"]["tau"] = 0.6
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another config"):
        load_pooler(tmp_path)


def test_run_fingerprint_covers_labels_and_splits():
    import numpy as np

    from glotpool.experiments.runs import data_fingerprint
    from glotpool.training.trainer import CachedSplit, CachedSplits

    def splits(targets, names=("neg", "pos"), dev_rows=(2, 3)):
        return CachedSplits("single", {"train": CachedSplit(np.array([0, 1]), None, np.array(targets)),
                                       "dev": CachedSplit(np.array(dev_rows), None, np.array([0, 1]))},
                            list(names))

    base = data_fingerprint(splits([0, 1]))
    assert base == data_fingerprint(splits([0, 1]))
    assert base != data_fingerprint(splits([1, 0]))  # flipped labels
    assert base != data_fingerprint(splits([0, 1], names=("negative", "positive")))  # renamed labels
    assert base != data_fingerprint(splits([0, 1], dev_rows=(3, 2)))  # texts moved


def test_atomic_dir_refuses_foreign_folder_and_cleans_dead_temps(tmp_path):
    from glotpool.io_utils import atomic_dir, atomic_write_text

    d = tmp_path / "out"
    d.mkdir()
    (d / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="--overwrite"):
        with atomic_dir(d, marker="encoder.json"):
            pass
    assert (d / "mine.txt").read_text() == "keep"
    stale = tmp_path / f".f.txt.{fm.dead_pid()}.x.tmp"
    stale.write_text("junk")
    live = tmp_path / f".f.txt.{os.getpid()}.y.tmp"
    live.write_text("in use")
    atomic_write_text(tmp_path / "f.txt", "new")
    assert not stale.exists() and live.exists()
