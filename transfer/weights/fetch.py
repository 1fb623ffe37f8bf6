"""Downloading registered weights, only when asked (``python -m transfer.weights fetch``, or a run with
``weights.fetch=true`` / ``TRANSFER_FETCH_WEIGHTS=1``, which fetches what it needs before it starts). Runs stay offline by default: clusters and hospitals often have no internet.

Sources, per registry entry: ``url`` (torchvision's model zoo, the fairseq release; a site mirror replaces the
origin with ``TRANSFER_WEIGHTS_MIRROR``, which must hold the same tree as ``weights/``) or ``hf_repo`` +
``hf_file`` (the Hugging Face hub through ``huggingface_hub``, which honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
tokens and its cache). Downloads go to ``.<file>.part`` beside the destination, resume from there after an
interruption, show a progress bar, and are renamed into place only when the checksum matches (the full sha256, or
the 8-digit prefix torchvision puts in its file names); a mismatch deletes the partial file and names both hashes.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from datamodules.files import atomic_write_text, file_lock, publish
from transfer.weights import WeightsEntry, WeightsError, load_registry, sha256sum, verify, weights_dir

ENV_MIRROR = "TRANSFER_WEIGHTS_MIRROR"
CHUNK = 1 << 20


def source_of(entry: WeightsEntry) -> str:
    mirror = os.environ.get(ENV_MIRROR)
    if entry.url:
        return f"{mirror.rstrip('/')}/{entry.file}" if mirror else entry.url
    if entry.hf_repo:
        return f"hf://{entry.hf_repo}/{entry.hf_file}"
    raise WeightsError(f"'{entry.name}' has no download source in the registry (url or hf_repo); place the file by "
                       f"hand: {entry.source or entry.hub}")


def download(url: str, part: Path, progress: bool = True, timeout: float = 60.0) -> None:
    """HTTP(S) download into ``part``, resuming from its current size when the server allows ranges."""
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # the partial file is already whole
            return
        raise WeightsError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise WeightsError(f"{url}: cannot connect ({getattr(e, 'reason', e)}); offline? Set {ENV_MIRROR} to a local "
                           f"mirror, or place the file by hand") from None
    with response:
        resumed = done and response.status == 206
        total = response.length + (done if resumed else 0) if response.length is not None else None
        bar = _bar(total, done if resumed else 0, part.name.removeprefix(".").removesuffix(".part"), progress)
        with open(part, "ab" if resumed else "wb") as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        bar.close()
    if total is not None and part.stat().st_size < total:
        raise WeightsError(f"{url}: transfer ended at {part.stat().st_size} of {total} bytes; run fetch again to resume")


def _bar(total, initial, name, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, disable=not enabled)


def fetch(name: str, registry: dict[str, WeightsEntry] | None = None, root: str | Path | None = None,
          progress: bool = True) -> Path:
    """The file of registry entry ``name``, downloaded and verified if it is not there yet."""
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise WeightsError(f"'{name}' is not a registered weights name (python -m transfer.weights list)")
    entry = registry[name]
    dest = Path(root or weights_dir()) / entry.file
    with file_lock(dest):
        if dest.exists():
            verify(dest, entry, root)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.part")
        src = source_of(entry)
        if src.startswith("hf://"):
            origin = _from_hub(entry, part)
        else:
            download(src, part, progress)  # an interrupted transfer keeps its part file: fetch again resumes
            origin = {"url": src}
        try:
            verify(part, entry, root)
        except WeightsError as e:
            part.unlink()
            raise WeightsError(f"{src}: {e}; the download was deleted") from None
        publish(part, dest, mode=0o644)
        _write_origin(dest, origin)
    return dest


def origin_file(dest: Path) -> Path:
    """Beside each fetched file: where it came from (url, or hub repo + the commit served), for the lock."""
    return dest.with_name(f".{dest.name}.origin.json")


def _write_origin(dest: Path, origin: dict) -> None:
    import json

    atomic_write_text(origin_file(dest), json.dumps(origin, sort_keys=True) + "\n")


def _from_hub(entry: WeightsEntry, part: Path) -> dict:
    """Through huggingface_hub (its cache, endpoint, token and offline mode apply), copied beside ``dest`` and
    checked against the sha256 the hub states for the file (an LFS file's ETag). Returns the origin."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    where = f"hf://{entry.hf_repo}/{entry.hf_file}"
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not when huggingface_hub was imported
    try:
        cached = hf_hub_download(repo_id=entry.hf_repo, filename=entry.hf_file, revision=entry.revision,
                                 endpoint=endpoint)
        meta = get_hf_file_metadata(hf_hub_url(entry.hf_repo, entry.hf_file, revision=entry.revision, endpoint=endpoint))
    except Exception as e:  # the hub client has many error types (offline, not found, gated, ...)
        raise WeightsError(f"{where}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    shutil.copyfile(cached, part)
    stated = (meta.etag or "").strip('"').removeprefix("W/").strip('"').lower()
    if entry.verify == "hub":
        if len(stated) != 64:
            part.unlink()
            raise WeightsError(f"{where}: the hub states no sha256 for this file (ETag {stated!r}), so it cannot be "
                               f"verified")
        actual = sha256sum(part)
        if actual != stated:
            part.unlink()
            raise WeightsError(f"{where}: downloaded bytes have sha256 {actual}, the hub states {stated}; the "
                               f"download was deleted")
    return {"hf_repo": entry.hf_repo, "hf_file": entry.hf_file, "revision": meta.commit_hash, "hub_sha256": stated}


def status(name: str, entry: WeightsEntry, root: str | Path | None = None) -> str:
    path = Path(root or weights_dir()) / entry.file
    if not path.exists():
        return "missing"
    try:
        return "checksum ok" if verify(path, entry, root) == "ok" else "present (no checksum pinned or locked)"
    except WeightsError:
        return "checksum MISMATCH"
