"""Local weights: a registry (name -> file under ``weights/``, hub id, sha256) and a resolver.

Nothing here touches the network. A registered name resolves to a file under the weights folder
(``$TRANSFER_WEIGHTS_DIR``, else ``weights/`` of the source checkout, else ``./weights``); when the file
is missing the error names the path to place it at, its checksum and where to obtain it.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from datamodules.files import sha256_file

ENV_VAR = "TRANSFER_WEIGHTS_DIR"


class WeightsError(RuntimeError):
    """A weights file is unknown, missing, or does not match its registered checksum."""


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    sha256: str | None = None
    sha256_prefix: str | None = None  # torchvision publishes the first 8 hex digits in its file names
    hub: str | None = None
    source: str | None = None
    url: str | None = None  # direct download (torchvision model zoo, fairseq release)
    hf_repo: str | None = None  # Hugging Face hub repo + file (through huggingface_hub)
    hf_file: str | None = None
    revision: str | None = None
    size: int | None = None  # bytes, where the pin's source states it
    pin_source: str | None = None  # where the full sha256 was published
    verify: str | None = None  # sha256 (pinned), hub (the hub's stated sha256, checked at download), lock (see below)


VERIFY = ("sha256", "hub", "lock")  # lock: no public checksum exists; the lab's weights/lock.yaml is the pin
LOCK_FILE = "lock.yaml"


RANDOM = "random"  # weights=random: a random initialisation, asked for explicitly and recorded in result rows


def random_init_requested(what: str, name: str, weights: str | None, pretrained_only: bool = True) -> bool:
    """True for ``weights=random``. A model that only makes sense pretrained (``pretrained_only``) and gets no
    weights is an error: silently training on a random backbone gives numbers that look real and are not."""
    if weights == RANDOM:
        import logging

        logging.getLogger("transfer").warning("%s '%s' starts from a RANDOM initialisation (weights=random)", what, name)
        return True
    if not weights and pretrained_only:
        raise WeightsError(f"{what} '{name}' is a pretrained model but no weights were given: set its weights to a "
                           f"registered name (python -m transfer.weights list) or a file, or to '{RANDOM}' to train "
                           f"from a random initialisation on purpose")
    return False


def weights_dir() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    checkout = Path(__file__).resolve().parents[2] / "weights"
    if (checkout / "registry.yaml").exists():
        return checkout
    return Path.cwd() / "weights"


def _registry_file() -> Path:
    for d in (weights_dir(), Path(__file__).resolve().parents[2] / "weights",
              Path(sys.prefix) / "share" / "transfer" / "weights"):
        if (d / "registry.yaml").exists():
            return d / "registry.yaml"
    raise WeightsError("weights/registry.yaml not found (set TRANSFER_WEIGHTS_DIR)")


def load_registry(path: str | Path | None = None) -> dict[str, WeightsEntry]:
    path = Path(path) if path else _registry_file()
    raw = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, fields in raw.items():
        if not isinstance(fields, dict) or "file" not in fields:
            raise WeightsError(f"{path}: entry '{name}' needs at least a 'file' field")
        entry = WeightsEntry(name=name, **fields)
        if entry.verify not in (None, *VERIFY):
            raise WeightsError(f"{path}: entry '{name}' has verify: {entry.verify}; use one of {', '.join(VERIFY)}")
        out[name] = entry
    return out


def load_lock(root: str | Path | None = None) -> dict[str, dict]:
    """``weights/lock.yaml`` (written by ``python -m transfer.weights lock``): name -> file, size, sha256, source."""
    path = Path(root or weights_dir()) / LOCK_FILE
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text()) or {}
    bad = [n for n, e in raw.items() if not isinstance(e, dict) or not isinstance(e.get("sha256"), str)]
    if bad:
        raise WeightsError(f"{path}: entry '{bad[0]}' has no sha256 (remake it: python -m transfer.weights lock)")
    return raw


sha256sum = sha256_file


def resolve(name_or_path: str | Path, registry: dict[str, WeightsEntry] | None = None,
            root: str | Path | None = None) -> Path:
    """Return the local file for a registered name or an existing path; never downloads."""
    candidate = Path(name_or_path)
    if candidate.suffix and candidate.exists():
        return candidate
    registry = load_registry() if registry is None else registry
    root = Path(root) if root else weights_dir()
    entry = registry.get(str(name_or_path))
    if entry is None:
        close = difflib.get_close_matches(str(name_or_path), list(registry), n=5, cutoff=0.4)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise WeightsError(
            f"'{name_or_path}' is neither an existing file nor a registered weights name.{hint} "
            f"Register it in weights/registry.yaml or pass a path."
        )
    path = root / entry.file
    if not path.exists():
        where = f" Obtain it from {entry.source or entry.hub}." if (entry.source or entry.hub) else ""
        checksum = f"sha256 {entry.sha256}" if entry.sha256 else (
            f"sha256 starting {entry.sha256_prefix}" if entry.sha256_prefix else "sha256 not pinned")
        how = (f"download it with `python -m transfer.weights fetch {entry.name}` (or let a run fetch it: "
               f"weights.fetch=true), or place the file at {path}") if (entry.url or entry.hf_repo) \
            else f"place the file at {path}"
        raise WeightsError(
            f"weights '{entry.name}' are not on this machine: {how} ({checksum}).{where} "
            "Nothing is downloaded unless asked; see weights/README.md."
        )
    verify(path, entry, root)
    return path


def verify(path: Path, entry: WeightsEntry, root: str | Path | None = None, use_lock: bool = True) -> str:
    """'ok' (a pin or the lab's lock matched), 'unverified' (nothing to check against) or raises naming both hashes.
    The lock (``<root>/lock.yaml``) is checked whenever it lists the entry, whatever the registry pins."""
    actual = sha256sum(path)
    if entry.sha256 and actual != entry.sha256:
        raise WeightsError(f"{path}: sha256 {actual} does not match the registered {entry.sha256} for '{entry.name}'")
    if entry.sha256_prefix and not actual.startswith(entry.sha256_prefix):
        raise WeightsError(f"{path}: sha256 {actual} does not start with the published prefix {entry.sha256_prefix} "
                           f"for '{entry.name}'")
    locked = load_lock(root or path.parents[len(Path(entry.file).parts) - 1]).get(entry.name) if use_lock else None
    if locked and actual != locked["sha256"]:
        raise WeightsError(f"{path}: sha256 {actual} differs from {locked['sha256']} in the lock file for "
                           f"'{entry.name}' (a swapped or corrupted file, or a lock from another release)")
    return "ok" if entry.sha256 or entry.sha256_prefix or locked else "unverified"
