"""Hugging Face Hub round trips for saved models (lowest layer, next to io_utils; huggingface_hub imported lazily).

    resolve_folder("models/glot")                   -> Path("models/glot")          (a local folder, as is)
    resolve_folder("org/glot", revision="v1")       -> the cached snapshot folder   (huggingface_hub.snapshot_download)
    push_folder("models/glot", "org/glot")          -> the commit URL                (HfApi.create_repo + upload_folder)

Why snapshot_download + upload_folder rather than ModelHubMixin: our folders are written by our own
``save_pretrained`` (atomic files, several sub-folders: an Encoder is ``encoder.json`` + ``pooler/`` + ``head/``), and
the mixin would impose its own single ``config.json`` + weights layout. A repo on the Hub is simply a copy of the
folder, so loading from the Hub is "download the snapshot, then load the folder".

``snapshot_download`` honours ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``; both are read again at every call here (the
library reads them once at import time), so setting them in a running process (tests, notebooks) works.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_TRUE = {"1", "on", "yes", "true"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def looks_like_repo_id(name: str) -> bool:
    """``"org/name"`` or ``"name"`` (no path separators beyond one '/', not starting like a path)."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return False
    return all(part and not part.startswith((".", "-")) for part in name.split("/"))


def resolve_folder(name_or_path: str | os.PathLike, revision: str | None = None, subfolder: str | None = None,
                   *, cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                   local_files_only: bool | None = None, what: str = "model") -> Path:
    """A local folder (returned as is) or a Hub repo id (downloaded / found in the HF cache) -> the folder.

    ``revision``: branch, tag or commit of a repo id (ignored for a local folder). ``subfolder``: a folder inside
    it. Offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) a repo id resolves from the cache only.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path / subfolder if subfolder else path
    name = str(name_or_path)
    if not looks_like_repo_id(name):
        raise FileNotFoundError(f"no {what} at {name}: not a folder, and not a Hub repo id (org/name)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ModuleNotFoundError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise ModuleNotFoundError(f"loading {name!r} from the Hub needs huggingface_hub (pip install "
                                  f"huggingface_hub); or pass a local folder") from e
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    kwargs = dict(revision=revision, cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE") or None, token=token,
                  local_files_only=bool(local_files_only) or offline)
    if subfolder:
        kwargs["allow_patterns"] = [f"{subfolder}/*", f"{subfolder}/**"]
    try:
        folder = Path(snapshot_download(name, **kwargs))
    except (LocalEntryNotFoundError, RepositoryNotFoundError) as e:
        where = "in the local Hugging Face cache (offline)" if kwargs["local_files_only"] else "on the Hub"
        raise FileNotFoundError(f"no {what} at {name!r}: not a local folder, and repo {name!r}"
                                f"{f' (revision {revision})' if revision else ''} was not found {where}: "
                                f"{e}") from e
    return folder / subfolder if subfolder else folder


def push_folder(folder: str | os.PathLike, repo_id: str, *, commit_message: str | None = None,
                private: bool | None = None, revision: str | None = None, token: str | bool | None = None,
                create_pr: bool = False, api=None) -> str:
    """Upload a saved model folder as the contents of Hub repo ``repo_id`` (created if missing) -> commit URL.

    ``api``: an ``huggingface_hub.HfApi``-like object (``create_repo``, ``upload_folder``); the default is
    ``HfApi(token=token)``. Tests pass a stub here: this is the one network boundary.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot push {folder}: not a folder")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                             commit_message=commit_message or "Upload glotpool model", create_pr=create_pr)
    return str(getattr(info, "commit_url", info))


def push_saved(save, repo_id: str, **kwargs) -> str:
    """``save(tmp_folder)`` then :func:`push_folder` it (the temporary folder is removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="glotpool-push-") as tmp:
        out = Path(tmp) / "model"
        save(out)
        return push_folder(out, repo_id, **kwargs)


__all__ = ["resolve_folder", "push_folder", "push_saved", "looks_like_repo_id"]
