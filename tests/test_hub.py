"""Models that travel: Hub repo ids (offline, from a local HF cache layout), push_to_hub (stubbed HfApi), portable
backbone references, moved folders.

Network boundary: ``push_to_hub`` is tested against a stub ``HfApi`` (``create_repo`` + ``upload_folder``) that
copies the uploaded folder into a local "remote" folder; loading is tested with ``HF_HUB_OFFLINE=1`` and
``HF_HUB_CACHE`` pointing at a test folder laid out like the real cache (blobs + snapshot symlinks + refs).
Nothing here talks to the real Hub.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from glotpool import Pooler, build_pooler, load_pooler
from glotpool.hub import looks_like_repo_id, push_folder, resolve_folder
from glotpool.training.heads import TaskHead, build_head

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hf_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, refs=("main",),
                    link=False) -> Path:
    """Lay ``folder`` out as ``repo_id`` at ``commit`` in a Hugging Face hub cache -> the snapshot folder.

    ``link``: symlink big blobs to the source files instead of copying them (the MiniLM weights).
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = f.relative_to(folder)
        blob = repo / "blobs" / hashlib.sha256(str(rel).encode() + f.read_bytes()[:4096]).hexdigest()
        if not blob.exists():
            if link:
                blob.symlink_to(f.resolve())
            else:
                shutil.copyfile(f, blob)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


class StubHfApi:
    """The network boundary: records calls; upload_folder copies the folder into ``remote/<repo_id>``."""

    def __init__(self, remote: Path):
        self.remote, self.calls = remote, []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, repo_id, folder_path, **kw):
        self.calls.append(("upload_folder", repo_id, kw))
        dst = self.remote / repo_id
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(folder_path, dst)
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/{COMMIT}"})()


def _pooler(seed=0):
    torch.manual_seed(seed)
    return build_pooler("glot", in_dim=8, hidden_dim=16, num_layers=1).eval()


def _same_outputs(a: Pooler, b: Pooler):
    g = torch.Generator().manual_seed(1)
    h, mask = torch.randn(2, 5, 8, generator=g), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(a(h, mask), b(h, mask))


def test_repo_id_shape():
    assert looks_like_repo_id("org/name") and looks_like_repo_id("name")
    for bad in ("./x", "/abs/x", "~/x", "a/b/c", "", "org/.hidden"):
        assert not looks_like_repo_id(bad)


def test_pooler_loads_from_cached_repo_id_and_revision(tmp_path, hf_cache):
    pool = _pooler()
    pool.save_pretrained(tmp_path / "pool")
    put_in_hf_cache(hf_cache, "org/glot-tiny", tmp_path / "pool", refs=("main", "v1"))
    for kw in ({}, {"revision": "v1"}, {"revision": COMMIT}):
        _same_outputs(pool, Pooler.from_pretrained("org/glot-tiny", **kw))
    _same_outputs(pool, load_pooler("org/glot-tiny"))
    with pytest.raises(FileNotFoundError, match="org/absent.*local Hugging Face cache"):
        Pooler.from_pretrained("org/absent")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        Pooler.from_pretrained(str(tmp_path / "nowhere"))


def test_subfolder_of_a_cached_repo(tmp_path, hf_cache):
    pool = _pooler()
    pool.save_pretrained(tmp_path / "repo" / "pooler")
    put_in_hf_cache(hf_cache, "org/multi", tmp_path / "repo")
    _same_outputs(pool, Pooler.from_pretrained("org/multi", subfolder="pooler"))
    assert resolve_folder(tmp_path / "repo", subfolder="pooler") == tmp_path / "repo" / "pooler"


def test_head_loads_from_cached_repo_id(tmp_path, hf_cache):
    torch.manual_seed(0)
    head = build_head("single", dim=8, num_labels=3)
    head.save_pretrained(tmp_path / "head")
    put_in_hf_cache(hf_cache, "org/head", tmp_path / "head")
    back = TaskHead.from_pretrained("org/head")
    z = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(head.eval()(z), back.eval()(z))


def test_push_to_hub_through_a_stub_api_then_load_by_id(tmp_path, hf_cache):
    pool, api = _pooler(seed=3), StubHfApi(tmp_path / "remote")
    url = pool.push_to_hub("org/pushed", api=api, private=True, commit_message="first")
    assert url.endswith(COMMIT)
    (c1, repo1, kw1), (c2, repo2, kw2) = api.calls
    assert (c1, repo1, kw1["private"], kw1["exist_ok"]) == ("create_repo", "org/pushed", True, True)
    assert (c2, repo2, kw2["commit_message"]) == ("upload_folder", "org/pushed", "first")
    uploaded = tmp_path / "remote" / "org/pushed"
    assert sorted(p.name for p in uploaded.iterdir()) == ["config.json", "model.safetensors"]
    put_in_hf_cache(hf_cache, "org/pushed", uploaded)  # what a later download would give
    _same_outputs(pool, Pooler.from_pretrained("org/pushed"))
    head = build_head("sts", dim=8)
    head.push_to_hub("org/head", api=api)
    assert json.loads((tmp_path / "remote" / "org/head" / "head.json").read_text())["task_type"] == "sts"
    with pytest.raises(FileNotFoundError):
        push_folder(tmp_path / "missing", "org/x", api=api)


# --- the Encoder: real MiniLM -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _encoder(minilm):
    from glotpool.encoder import Encoder

    torch.manual_seed(0)
    pool = build_pooler("glot", in_dim=384, hidden_dim=16, num_layers=1)
    head = build_head("single", dim=pool.out_dim, num_labels=2)
    return Encoder(minilm, pool, head, label_names=["neg", "pos"])


TEXTS = ["a fine film .", "dull and long ."]


@pytest.mark.slow
def test_encoder_reference_is_portable_and_travels(minilm, one_thread, tmp_path, hf_cache):
    from glotpool.encoder import Encoder

    enc = _encoder(minilm)
    want = enc.encode(TEXTS, show_progress=False)
    enc.save_pretrained(tmp_path / "here" / "model")
    ref = json.loads((tmp_path / "here" / "model" / "encoder.json").read_text())["backbone"]
    assert ref["name_or_path"] == "minilm" and ref["preset"] == "minilm"
    assert ref["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2" and len(ref["weights_sha256"]) == 64
    assert ref["local_path"] is None and not Path(ref["name_or_path"]).is_absolute()
    # "another machine": the folder moved elsewhere, loaded by path and by a cached repo id
    moved = tmp_path / "elsewhere" / "copied-model"
    moved.parent.mkdir()
    shutil.move(tmp_path / "here" / "model", moved)
    shutil.rmtree(tmp_path / "here")
    torch.testing.assert_close(Encoder.from_pretrained(moved, device="cpu").encode(TEXTS, show_progress=False), want)
    put_in_hf_cache(hf_cache, "org/glot-minilm", moved, refs=("main",))
    by_id = Encoder.from_pretrained("org/glot-minilm", device="cpu")
    torch.testing.assert_close(by_id.encode(TEXTS, show_progress=False), want)
    assert by_id.predict(TEXTS) == enc.predict(TEXTS)
    url = enc.push_to_hub("org/pushed-encoder", api=StubHfApi(tmp_path / "remote"))
    assert url and (tmp_path / "remote" / "org/pushed-encoder" / "pooler" / "config.json").is_file()


@pytest.mark.slow
def test_backbone_found_by_hub_id_without_the_preset_and_mismatch_refused(minilm, one_thread, tmp_path, hf_cache):
    """The preset is not installed on the other machine: the backbone comes from the HF cache by its hub id."""
    from glotpool.encoder import Encoder
    from glotpool.states.backbone import PRESETS, package_dir

    enc = _encoder(minilm)
    want = enc.encode(TEXTS, show_progress=False)
    enc.save_pretrained(tmp_path / "model")
    cfg = tmp_path / "model" / "encoder.json"
    meta = json.loads(cfg.read_text())
    meta["backbone"].update(preset="not-installed", name_or_path="not-installed")
    cfg.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="(?s)cannot find the backbone.*Hub repo 'sentence-transformers"):
        Encoder.from_pretrained(tmp_path / "model", device="cpu")
    p = PRESETS["minilm"]
    src = package_dir(p["package"], p["pip"]) / p["subdir"]
    put_in_hf_cache(hf_cache, "sentence-transformers/all-MiniLM-L6-v2", src, link=True)
    back = Encoder.from_pretrained(tmp_path / "model", device="cpu")
    assert "models--sentence-transformers--all-MiniLM-L6-v2" in back.backbone.source["path"]
    torch.testing.assert_close(back.encode(TEXTS, show_progress=False), want)
    # another revision of the same repo whose tokenizer differs: found, and refused
    other = tmp_path / "other-rev"
    shutil.copytree(src, other, symlinks=True, ignore=shutil.ignore_patterns("*.safetensors"))
    (other / "model.safetensors").symlink_to(src / "model.safetensors")
    tok_cfg = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "note": "edited"}))
    shutil.rmtree(hf_cache / "models--sentence-transformers--all-MiniLM-L6-v2")
    put_in_hf_cache(hf_cache, "sentence-transformers/all-MiniLM-L6-v2", other, link=True)
    with pytest.raises(ValueError, match="trained on other backbone states"):
        Encoder.from_pretrained(tmp_path / "model", device="cpu")


def test_hub_identity_of_a_cache_snapshot_folder():
    from glotpool.encoder import _hub_identity

    assert _hub_identity(Path(f"/c/models--org--name/snapshots/{COMMIT}")) == ("org/name", COMMIT)
    assert _hub_identity(Path("/some/folder")) == (None, None)


# --- MTEB: ModelMeta with a loader; results in MTEB's cache by default --------------------------------------------
@pytest.mark.slow
def test_mteb_get_model_rebuilds_a_glotpool_model_from_folder_or_id(minilm, one_thread, tmp_path, hf_cache,
                                                                      monkeypatch):
    mteb = pytest.importorskip("mteb")
    from glotpool.data import TextDataset
    from glotpool.integrations.mteb import MTEBEncoder, evaluate_mteb, mteb_model_meta, sts_task

    enc = _encoder(minilm)
    enc.save_pretrained(tmp_path / "glot-minilm")
    meta = mteb_model_meta(tmp_path / "glot-minilm")
    assert meta.name == "glotpool/glot-minilm" and meta.embed_dim == enc.dim
    assert meta.adapted_from == "sentence-transformers/all-MiniLM-L6-v2"
    model = mteb.get_model("glotpool/glot-minilm", device="cpu")
    assert isinstance(model, MTEBEncoder) and model.mteb_model_meta.name == "glotpool/glot-minilm"
    torch.testing.assert_close(model.model.encode(TEXTS), enc.encode(TEXTS))
    put_in_hf_cache(hf_cache, "org/glot-minilm", tmp_path / "glot-minilm")
    mteb_model_meta("org/glot-minilm", revision=COMMIT)
    by_id = mteb.get_model("org/glot-minilm", revision=COMMIT, device="cpu")
    torch.testing.assert_close(by_id.model.encode(TEXTS), enc.encode(TEXTS))
    # evaluate_mteb: MTEB's results cache by default ($MTEB_CACHE), filed under the model's name
    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb-cache"))
    pairs = TextDataset([f"a cat sat {i} ." for i in range(12)], [f"a cat is sitting {i} ." for i in range(12)],
                        [float(i % 6) for i in range(12)])
    res = evaluate_mteb(model, tasks=[sts_task(pairs, 0, 5)], show_progress=False)
    files = list((tmp_path / "mteb-cache").rglob("LocalSTS.json"))
    assert files and any("glot-minilm" in str(f) for f in files)
    assert res["LocalSTS"]["main_score"] == pytest.approx(res["LocalSTS"]["scores"]["test"][0]["main_score"])
