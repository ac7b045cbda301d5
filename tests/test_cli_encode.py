"""`glotpool train` -> `glotpool encode` / `glotpool predict` end to end on MiniLM (in-process CLI calls)."""
import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import glotpool.states.backbone as bbmod  # noqa: E402
import glotpool.cli as cli  # noqa: E402
from glotpool.encoder import Encoder  # noqa: E402

DATA = Path(__file__).parent / "data" / "pang-lee" / "sentences.csv"
LONG = "word " * 300
ROWS = [("a1", "a wonderful , moving and funny film ."), ("a2", ""), ("a3", "dull , boring and far too long ."),
        None, ("a5", LONG), ("a6", "the best thing i have seen this year ."), ("a7", "   ")]
TEXTS = [r[1].strip() for r in ROWS if r is not None and r[1].strip()]  # non-empty texts, file order
EMPTY = [2, 4, 7]  # 1-based data rows: empty cell, blank line, whitespace


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Register the commands, one torch thread, and load each backbone config once for the whole module."""
    real_load, loaded = bbmod.load_backbone, {}

    def cached_load(name="minilm", **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in loaded:
            loaded[key] = real_load(name, **kw)
        return loaded[key]

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: 2 threads make forwards ~10x slower
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLOTPOOL_HOME", os.environ.get("GLOTPOOL_HOME") or str(tmp_path_factory.mktemp("home")))
        for name in ("train", "encode", "predict"):
            if name not in cli.COMMANDS:
                mp.setattr(cli, "COMMANDS", cli.COMMANDS + [name])
        mp.setattr(bbmod, "load_backbone", cached_load)
        mp.setattr("glotpool.encoder.load_backbone", cached_load)
        yield
    torch.set_num_threads(n_threads)


@pytest.fixture(scope="module")
def model(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    rc = cli.main(["train", "--backbone", "minilm", "--data", str(DATA), "--pooler", "glot:hidden_dim=32",
                   "--epochs", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "in.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for r in ROWS:
            if r is None:
                f.write("\r\n")  # a blank line
            else:
                w.writerow(r)
    return path


@pytest.mark.slow
def test_train_writes_a_loadable_model_and_prints_metrics(model, capsys):
    assert {p.name for p in (model / "model").iterdir()} == {"encoder.json", "labels.json", "pooler", "head",
                                                            "README.md"}
    assert (model / "run" / "best" / "pooler").is_dir() and (model / "cache" / "index.json").is_file()
    labels = json.loads((model / "model" / "labels.json").read_text())
    assert labels["task_type"] == "single" and labels["label_names"] == ["negative", "positive"]
    enc = Encoder.from_pretrained(model / "model")
    assert enc.pooler.name == "glot" and enc.dim == 384 + 2 * 32
    run = json.loads((model / "run" / "run.json").read_text())["record"]
    assert run["test"]["accuracy"] > 0.5  # 2 epochs on 160 sentences: better than chance
    bb = bbmod.load_backbone("minilm")
    other = dataclasses.replace(bb, config=dataclasses.replace(bb.config, max_length=64), _fingerprint=None)
    with pytest.raises(ValueError, match="max_length: trained on 256, found 64"):  # checked against the cache
        Encoder.from_run(model / "run", other)
    assert Encoder.from_run(model / "run", other, check_backbone=False).dim == enc.dim
    # the run is reused on a rerun (no training) and its metrics printed again
    assert cli.main(["train", "--backbone", "minilm", "--data", str(DATA), "--pooler", "glot:hidden_dim=32",
                     "--epochs", "2", "--out", str(model), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and f"{run['test']['accuracy']:.4f}" in out


@pytest.mark.slow
def test_encode_npy_streams_and_reports_empty_and_long_texts(model, table, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", "--model", str(model / "model"), "--input", str(table), "--out", str(out),
                     "--chunk-size", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "3 of 7 rows have an empty text (data rows 2, 4, 7)" in err
    assert "1 text(s) exceed max_length=256" in err and "data rows 5" in err
    z = np.load(out)
    enc = Encoder.from_pretrained(model / "model")
    assert z.shape == (len(ROWS), enc.dim) and z.dtype == np.float32
    empty = np.isnan(z).all(1)
    assert [i + 1 for i in np.flatnonzero(empty)] == EMPTY and np.isfinite(z[~empty]).all()
    np.testing.assert_allclose(z[~empty], enc.encode(TEXTS, show_progress=False), atol=2e-5, rtol=1e-4)
    # one big chunk gives the same file content
    out2 = tmp_path / "emb2.npy"
    assert cli.main(["encode", "--model", str(model / "model"), "--input", str(table), "--out", str(out2),
                     "--quiet"]) == 0
    np.testing.assert_allclose(np.load(out2), z, atol=2e-5, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb2.npy", "in.csv"]  # no temp files left


@pytest.mark.slow
def test_encode_parquet_with_ids_and_jsonl_input(model, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [{"key": 7, "sentence": "a fine film ."},
                                                      {"key": 8},  # no text: reported, NaN
                                                      {"key": 9, "sentence": "awful ."}]) + "\n")
    out = tmp_path / "emb.parquet"
    assert cli.main(["encode", "--model", str(model / "model"), "--input", str(src), "--text-col", "sentence",
                     "--id-col", "key", "--out", str(out), "--normalize", "--quiet"]) == 0
    assert "data rows 2" in capsys.readouterr().err
    t = pq.read_table(out)
    assert t.column_names == ["id", "embedding"] and t.column("id").to_pylist() == ["7", "8", "9"]
    emb = np.array(t.column("embedding").to_pylist(), dtype=np.float32)
    assert np.isnan(emb[1]).all()
    np.testing.assert_allclose(np.linalg.norm(emb[[0, 2]], axis=1), 1.0, rtol=1e-5)
    # without --id-col: 1-based row numbers
    assert cli.main(["encode", "--model", str(model / "model"), "--input", str(src), "--text-col", "sentence",
                     "--out", str(out), "--quiet"]) == 0
    assert pq.read_table(out).column("row").to_pylist() == [1, 2, 3]


@pytest.mark.slow
def test_predict_csv_matches_the_encoder(model, table, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert cli.main(["predict", "--model", str(model / "model"), "--input", str(table), "--id-col", "id",
                     "--out", str(out), "--chunk-size", "3", "--quiet"]) == 0
    assert "3 of 7 rows have an empty text" in capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "label", "p_negative", "p_positive"]
    assert [r["id"] for r in rows] == ["a1", "a2", "a3", "", "a5", "a6", "a7"]
    full = [r for i, r in enumerate(rows, 1) if i not in EMPTY]
    assert all(rows[i - 1]["label"] == "" and rows[i - 1]["p_positive"] == "" for i in EMPTY)
    enc = Encoder.from_pretrained(model / "model")
    proba = enc.predict_proba(TEXTS)
    got = np.array([[float(r["p_negative"]), float(r["p_positive"])] for r in full])
    np.testing.assert_allclose(got, proba, atol=1e-5)
    assert [r["label"] for r in full] == enc.predict(TEXTS)


@pytest.mark.slow
def test_user_errors_exit_2_with_a_clear_message_and_no_output(model, table, tmp_path, capsys):
    m = str(model / "model")
    out = tmp_path / "p.csv"
    assert cli.main(["predict", "--model", m, "--input", str(table), "--out", str(out), "--on-empty", "error"]) == 2
    err = capsys.readouterr().err
    assert "3 empty text(s) at data row(s) 2, 4, 7" in err and not out.exists()
    assert cli.main(["encode", "--model", m, "--input", str(table), "--text-col", "sentence",
                     "--out", str(tmp_path / "e.npy")]) == 2
    assert "column(s) ['sentence'] not found; the columns are ['id', 'text']" in capsys.readouterr().err
    assert cli.main(["encode", "--model", m, "--input", str(table), "--id-col", "id",
                     "--out", str(tmp_path / "e.npy")]) == 2
    assert "--id-col needs .parquet" in capsys.readouterr().err
    assert cli.main(["predict", "--model", m, "--input", str(table), "--text-col-2", "text", "--out", str(out)]) == 2
    assert "single sentences" in capsys.readouterr().err
    assert cli.main(["encode", "--model", str(tmp_path), "--input", str(table), "--out", str(tmp_path / "e.npy")]) == 2
    assert "encoder.json is missing" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


@pytest.mark.slow
def test_predict_sts_model_on_tsv_pairs(env, tmp_path, capsys):
    from glotpool.pooling import build_pooler
    from glotpool.training.heads import build_head

    bb = bbmod.load_backbone("minilm")  # the module's cached one
    Encoder(bb, build_pooler("mean", in_dim=bb.dim), build_head("sts", bb.dim),
            score_range=(0.0, 5.0)).save_pretrained(tmp_path / "sts")
    src = tmp_path / "pairs.tsv"
    src.write_text("a\tb\na cat sleeps .\ta cat is sleeping .\nthe stock fell\tI like pizza\n")
    out = tmp_path / "sim.csv"
    assert cli.main(["predict", "--model", str(tmp_path / "sts"), "--input", str(src), "--text-col", "a",
                     "--text-col-2", "b", "--out", str(out), "--quiet"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["row", "similarity", "score"] and [r["row"] for r in rows] == ["1", "2"]
    enc = Encoder.from_pretrained(tmp_path / "sts")
    sim = enc.similarity(["a cat sleeps .", "the stock fell"], ["a cat is sleeping .", "I like pizza"])
    np.testing.assert_allclose([float(r["similarity"]) for r in rows], sim, atol=1e-5)
    np.testing.assert_allclose([float(r["score"]) for r in rows], 5.0 * sim, atol=1e-4)
    assert sim[0] > sim[1]
    assert cli.main(["predict", "--model", str(tmp_path / "sts"), "--input", str(src), "--text-col", "a",
                     "--out", str(out)]) == 2
    assert "give --text-col-2" in capsys.readouterr().err
