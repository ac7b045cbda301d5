"""Small file helpers shared by every layer: atomic writes and content hashes.

Writes go to a temporary file in the destination folder and are renamed into place, so a reader (or a resumed
job) never sees a half-written file, even if the process is killed mid-write.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files / folders of ``path`` left by a killed writer (``.NAME.<pid>.XXXX.tmp`` and
    ``.NAME.old-<pid>`` whose process is gone); returns what was removed. Live writers' temps are kept."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    head = f".{path.name}."
    for p in path.parent.iterdir():
        n = p.name
        if not n.startswith(head):
            continue
        rest = n[len(head):]
        if rest.endswith(".tmp"):
            pid = rest.split(".", 1)[0]
        elif rest.startswith("old-"):
            pid = rest[4:]
        else:
            continue
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` (atomic on POSIX).

    Temporary files of the same target left by a killed process (``.NAME.<pid>.XXXX.tmp``) are removed first."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name to write to")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:  # make the bytes durable before the rename publishes them
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def refuse_foreign_dir(path: str | os.PathLike, marker: str | None, overwrite: bool = False,
                       what: str = "glotpool folder") -> None:
    """ValueError unless ``path`` may be replaced as a whole: it does not exist, is an empty folder, holds
    ``marker`` (a file that only a glotpool folder of the same kind has), or ``overwrite`` is set. A file at
    ``path`` is always refused. Call it before the work, so nothing is computed for a write that cannot happen."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{path} is a broken symlink; remove it or choose another --out")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder; choose another --out (a folder name)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot create {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK) and not path.exists():
                raise ValueError(f"cannot create {path}: {parent} is not writable; choose another --out")
            break
    if not path.is_dir() or overwrite:
        return
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot replace {path}: {path.parent} is not writable; choose another --out")
    if marker is not None and (path / marker).exists():
        return
    if next(path.iterdir(), None) is not None:
        raise ValueError(f"{path} is a non-empty folder that is not a {what}; it would be replaced as a whole. "
                         f"Choose another --out (a new or empty folder), or pass --overwrite to replace it "
                         f"(its current contents are deleted)")


@contextmanager
def atomic_dir(path: str | os.PathLike, marker: str | None = None, overwrite: bool = False,
               what: str = "glotpool folder") -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` as a whole (an old ``path`` is removed last).

    An existing non-empty ``path`` is only replaced when it holds ``marker`` (a glotpool folder of the same kind)
    or ``overwrite=True``: :func:`refuse_foreign_dir` (checked before and after the work)."""
    path = Path(path)
    refuse_foreign_dir(path, marker, overwrite, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        refuse_foreign_dir(path, marker, overwrite, what)  # the folder may have changed meanwhile
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_texts(texts) -> str:
    """Order-sensitive fingerprint of a sequence of strings (or of (str, str) pairs)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(repr(t).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# messages

ROWS_SHOWN = 10


def rows_str(rows, total: int | None = None, offset: int = 0) -> str:
    """``"3, 7, 12, ... (40 more)"``: the first rows of a list (plus ``offset``: 1-based, header rows), for errors."""
    rows = list(rows)
    total = len(rows) if total is None else total
    shown = ", ".join(str(int(r) + offset) for r in rows[:ROWS_SHOWN])
    return shown + (f", ... ({total - min(len(rows), ROWS_SHOWN)} more)" if total > ROWS_SHOWN else "")


def dict_diff(old: Any, new: Any, old_name: str = "was", new_name: str = "now", prefix: str = "",
              ignore: frozenset = frozenset()) -> list[str]:
    """Readable differences between two nested JSON-like values: ``["layer: was -1, now -4", ...]``; sha256
    strings are shortened; top-level keys in ``ignore`` are skipped."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if not prefix and k in ignore:
                continue
            out += dict_diff(old.get(k), new.get(k), old_name, new_name, f"{prefix}{k}.")
        return out
    if old == new:
        return []
    short = lambda v: v[:12] + "..." if isinstance(v, str) and len(v) == 64 else v  # noqa: E731  (sha256)
    return [f"{prefix.rstrip('.')}: {old_name} {short(old)!r}, {new_name} {short(new)!r}"]
