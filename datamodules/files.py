"""Files that many processes share: written whole or not at all, appended line by line under a lock, named by a key
of their contents. The one place in the project that renames, syncs and locks files (records, checkpoints,
cached stages and datasets, weights downloads, adapters, NIfTI outputs)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

CHUNK = 1 << 20


def content_key(settings: Mapping[str, Any], length: int = 12) -> str:
    """A short stable hash of ``settings`` (JSON with sorted keys): the name of what they decide."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:length]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock on the hidden file ``.<name>.lock`` beside ``path`` (blocks until it is free)."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def publish(tmp: str | Path, path: str | Path, mode: int | None = None) -> None:
    """Move a finished file (synced first) or folder onto ``path`` in one rename; ``mode``: the file's permissions
    (default: what the umask gives any new file)."""
    tmp = Path(tmp)
    if tmp.is_file():
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique temporary path beside ``path`` (ending in ``suffix``: a writer that picks its format by extension,
    e.g. ``.nii.gz``, still can); published onto ``path`` when the block succeeds, removed otherwise, so a reader
    never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def append_locked(path: str | Path, text: str) -> None:
    """Append ``text`` in one write (whole lines, never interleaved with another process's), synced. Call it under
    :func:`file_lock` when the file is also rewritten."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
