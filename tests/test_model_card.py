"""Model cards: `glotpool train`'s OUT/model, Encoder.save_pretrained and export-st folders get a README.md with Hub
YAML metadata, the run's real dev / test numbers and usage snippets that run as written."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import glotpool.cli as cli  # noqa: E402
from glotpool.model_card import encoder_card, read_card_metadata, st_card  # noqa: E402

DATA = Path(__file__).parent / "data" / "pang-lee" / "sentences.csv"
ROOT = Path(__file__).resolve().parents[1]


def _blocks(readme: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", readme, flags=re.S)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny `glotpool train` run (MiniLM, 1 epoch, 120 training sentences)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train")
    assert cli.main(["train", "--backbone", "minilm", "--data", str(DATA), "--pooler", "glot:hidden_dim=16",
                     "--epochs", "1", "--max-train", "120", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    yield out
    torch.set_num_threads(n)


@pytest.mark.slow
def test_train_writes_a_card_with_the_runs_real_numbers(trained):
    readme = (trained / "model" / "README.md").read_text()
    rec = json.loads((trained / "run" / "run.json").read_text())["record"]
    meta = read_card_metadata(readme)
    assert meta["library_name"] == "glotpool" and meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["pipeline_tag"] == "text-classification" and "glotpool" in meta["tags"]
    assert meta["datasets"] == ["sentences"] and "accuracy" in meta["metrics"]
    results = {(r["dataset"]["split"], m["type"]): m["value"] for r in meta["model-index"][0]["results"]
               for m in r["metrics"]}
    for split, key in (("dev", "validation"), ("test", "test")):
        for metric, value in rec[split].items():
            assert results[(key, metric)] == pytest.approx(value, abs=1e-6)
            assert f"| {split} | {metric} | {value:.4f} |" in readme
    enc_meta = json.loads((trained / "model" / "encoder.json").read_text())
    splits = enc_meta["training"]["splits"]
    assert set(splits) == {"train", "dev", "test"} and splits["train"] <= 120  # --max-train 120
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("| splits | ")]
    assert all(f"{k} {v:,}" in line for k, v in splits.items())
    assert "| seed | 3 |" in readme and "`glot:hidden_dim=16`" in readme
    assert enc_meta["training"]["dev"] == rec["dev"] and enc_meta["training"]["task"] == "sentences"


@pytest.mark.slow
def test_card_python_and_cli_snippets_run_as_written(trained, tmp_path, capsys, monkeypatch):
    readme = (trained / "model" / "README.md").read_text()
    (py,) = _blocks(readme, "python")
    assert f"Encoder.from_pretrained({str(trained / 'model')!r})" in py
    monkeypatch.chdir(tmp_path)
    exec(compile(py, "README.md", "exec"), {})  # the Python snippet, verbatim (in-process: one MiniLM load)
    printed = capsys.readouterr().out
    assert "(2, " in printed and ("positive" in printed or "negative" in printed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    (sh,) = _blocks(readme, "bash")
    lines = [line for line in sh.splitlines() if not line.startswith("pip install")]
    # as written, in a shell, up to the first glotpool command; later glotpool commands in-process (start-up time)
    first = next(i for i, line in enumerate(lines) if line.startswith("glotpool "))
    r = subprocess.run(["bash", "-euc", "\n".join(lines[:first + 1])], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in lines[first + 1:]:
        assert line.startswith("glotpool ") and cli.main(shlex.split(line)[1:]) == 0, line
    assert (tmp_path / "vectors.npy").is_file() and (tmp_path / "predictions.csv").is_file()


@pytest.mark.slow
def test_export_st_card_and_model_card_data(trained, tmp_path):
    from glotpool.integrations.sentence_transformers import load_sentence_transformer

    out = tmp_path / "glot-st"
    assert cli.main(["export-st", "--model", str(trained / "model"), "--out", str(out),
                     "--model-id", "org/glot-minilm-st"]) == 0
    readme = (out / "README.md").read_text()
    assert 'pip install "glotpool[st]"' in readme and "trust_remote_code=True" in readme
    meta = read_card_metadata(readme)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["model-index"][0]["name"] == "glot-minilm-st"
    rec = json.loads((trained / "run" / "run.json").read_text())["record"]
    assert f"{rec['test']['accuracy']:.4f}" in readme
    st = load_sentence_transformer(out, device="cpu")
    assert st.model_card_data.model_name == "glot-minilm-st"
    assert st.model_card_data.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_card_without_training_info_still_renders():
    meta = {"pooler": "mean", "dim": 384, "task_type": None, "glotpool_version": "0",
            "backbone": {"hub_id": "org/base", "name_or_path": "org/base", "layer": -1, "max_length": 128,
                         "dtype": "float32"}}
    card = encoder_card(meta, model_id="org/mean-pooled")
    data = read_card_metadata(card)
    assert data["pipeline_tag"] == "feature-extraction" and data["base_model"] == "org/base"
    assert "## Training" not in card and "Encoder.from_pretrained('org/mean-pooled')" in card
    st = st_card(meta, {"normalize": True, "pooler": "mean", "layer": -1}, model_id="x")
    assert read_card_metadata(st)["library_name"] == "sentence-transformers" and "Normalize" in st
