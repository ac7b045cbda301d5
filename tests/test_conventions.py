"""Conventions (#19): `python -m glotpool`, --version, help + defaults on every flag, --quiet everywhere, progress bars
off when stderr is not a terminal, SentenceTransformer.encode argument names, datasets inputs, packaging metadata."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glotpool.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _leaves(parser, name="glotpool"):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
        return
    for action in subs:
        for n, p in action.choices.items():
            yield from _leaves(p, f"{name} {n}")


def test_python_m_glotpool_and_version():
    from importlib.metadata import version

    import glotpool

    r = subprocess.run([sys.executable, "-m", "glotpool", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"glotpool {glotpool.__version__}"
    assert glotpool.__version__ == version("glotpool")  # one source: the package metadata


def test_every_flag_has_help_and_shows_its_default_and_every_command_has_quiet():
    leaves = list(_leaves(build_parser()))
    assert len(leaves) >= 14
    for name, p in leaves:
        flags = [a for a in p._actions if a.option_strings and a.option_strings[0] not in ("-h", "--help")]
        missing = [a.option_strings[0] for a in flags if not a.help]
        assert not missing, f"{name}: flags without help: {missing}"
        assert any("--quiet" in a.option_strings for a in flags), f"{name} has no --quiet"
        text = p.format_help()
        for a in flags:
            if a.default not in (None, False, argparse.SUPPRESS) and "default" not in a.help.lower():
                assert f"(default: {a.default})" in " ".join(text.split()), (name, a.option_strings[0])
    enc = dict(leaves)["glotpool encode"].format_help()
    assert "(default: 32)" in " ".join(enc.split())


def test_progress_bars_off_when_stderr_is_not_a_terminal(capsys):
    from tqdm.auto import tqdm

    # what every glotpool bar passes when progress is on: disable=None -> tqdm turns itself off off-terminal
    show_progress = True
    with tqdm(total=3, desc="x", disable=not show_progress or None) as bar:
        bar.update(3)
    assert bar.disable and capsys.readouterr().err == ""
    sources = [p for p in (ROOT / "src" / "glotpool").rglob("*.py") if "tqdm(" in p.read_text()]
    for src in sources:
        for line in src.read_text().splitlines():
            assert not re.search(r"disable=not [\w.]+\)", line), f"{src.name}: a bar that floods logs: {line}"


def test_quiet_turns_off_every_bar(monkeypatch):
    import tqdm.std as tqdm_std

    import glotpool.cli as cli

    tqdm = tqdm_std.tqdm
    monkeypatch.setattr(tqdm, "__init__", tqdm.__init__)  # restored afterwards
    for var in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    cli._quiet()
    cli._quiet()  # idempotent
    with tqdm(total=2, disable=False) as bar:
        assert bar.disable


# --- Encoder.encode with sentence-transformers' argument names ----------------------------------------------------
@pytest.fixture(scope="module")
def encoder(minilm):
    from glotpool import build_pooler
    from glotpool.encoder import Encoder

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield Encoder(minilm, build_pooler("mean", in_dim=384))
    torch.set_num_threads(n)


@pytest.mark.slow
def test_encode_takes_sentence_transformers_arguments(encoder, capsys):
    texts = ["a fine film .", "dull ."]
    base = encoder.encode(texts)
    assert capsys.readouterr().err == ""  # default: no bar when stderr is not a terminal
    one = encoder.encode("a fine film .")
    assert one.shape == (encoder.dim,) and np.allclose(one, base[0], atol=1e-5)
    z = encoder.encode(texts, batch_size=1, normalize_embeddings=True, convert_to_tensor=True,
                       show_progress_bar=False, device="cpu", prompt_name=None)
    assert isinstance(z, torch.Tensor) and torch.allclose(z.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert isinstance(encoder.encode(texts, convert_to_numpy=False), torch.Tensor)
    assert isinstance(encoder.encode(texts, convert_to_numpy=True), np.ndarray)


@pytest.mark.slow
def test_encode_takes_a_datasets_column_or_dataset(encoder):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a fine film .", "dull ."], "label": [1, 0]})
    want = encoder.encode(["a fine film .", "dull ."])
    assert np.allclose(encoder.encode(ds["text"]), want, atol=1e-5)
    assert np.allclose(encoder.encode(ds, column="text"), want, atol=1e-5)
    assert np.allclose(encoder.encode(ds), want, atol=1e-5)  # its one string column
    with pytest.raises(ValueError, match="column"):
        encoder.encode(datasets.Dataset.from_dict({"a": ["x"], "b": ["y"]}))


def test_data_loader_takes_an_in_memory_dataset():
    datasets = pytest.importorskip("datasets")
    from glotpool.data import from_hf_dataset

    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"sentence": ["good .", "bad ."], "label": [1, 0]}, features=feats)
    td = from_hf_dataset(ds, text_col="sentence", label_col="label")
    assert td.texts == ["good .", "bad ."] and td.labels == ["pos", "neg"]
    with pytest.raises(ValueError, match="not found"):
        from_hf_dataset(ds, text_col="text")


# --- packaging ------------------------------------------------------------------------------------------------------
def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lower_bound(reqs: list[str], name: str) -> tuple[int, ...]:
    (req,) = [r for r in reqs if re.match(rf"{re.escape(name)}\s*>=", r)]
    return tuple(int(x) for x in re.search(r">=\s*([\d.]+)", req).group(1).split("."))


def test_packaging_metadata():
    proj = _pyproject()["project"]
    license_text = (ROOT / "LICENSE").read_text()
    assert proj["license"] == {"text": "Apache-2.0"} and "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text
    assert "License :: OSI Approved :: Apache Software License" in proj["classifiers"]
    assert "Typing :: Typed" in proj["classifiers"] and (ROOT / "src" / "glotpool" / "py.typed").is_file()
    assert _pyproject()["tool"]["setuptools"]["package-data"]["glotpool"] == ["py.typed"]
    assert "urls" not in proj  # no invented addresses: added once the repository is public
    # the st extra requires the sentence-transformers major we import (sentence_transformers.base.modules: ST 6)
    import sentence_transformers

    st_major = _lower_bound(proj["optional-dependencies"]["st"], "sentence-transformers")[0]
    assert st_major == 6 and int(sentence_transformers.__version__.split(".")[0]) >= st_major
    assert _lower_bound(proj["optional-dependencies"]["all"], "sentence-transformers")[0] == st_major
    # transformers: we pass AutoModel.from_pretrained(dtype=...), added (renamed from torch_dtype) in 4.56
    assert _lower_bound(proj["dependencies"], "transformers") >= (4, 56)
    src = (ROOT / "src" / "glotpool" / "states" / "backbone.py").read_text()
    assert "from_pretrained(path, dtype=" in src and "torch_dtype" not in src
    # one source of the version: no literal version string in the package
    init = (ROOT / "src" / "glotpool" / "__init__.py").read_text()
    assert '_version("glotpool")' in init and not re.search(r'__version__\s*=\s*"\d+\.\d+\.\d+"', init)
