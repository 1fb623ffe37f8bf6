"""Local weights: a registry (name -> file under ``weights/``, hub id, sha256) and a resolver.

Nothing here touches the network. A registered name resolves to a file under the weights folder
(``$TRANSFER_WEIGHTS_DIR``, else ``weights/`` of the source checkout, else ``./weights``); when the file
is missing the error names the path to place it at, its checksum and where to obtain it.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch
import yaml

ENV_VAR = "TRANSFER_WEIGHTS_DIR"


class WeightsError(RuntimeError):
    """A weights file is unknown, missing, or does not match its registered checksum."""


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str
    sha256: str | None = None
    hub: str | None = None
    source: str | None = None


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


class CheckpointFileError(RuntimeError):
    """A checkpoint file is missing, empty, truncated or not a checkpoint at all."""


def load_checkpoint_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file. A file that is not a
    plain tensor checkpoint is refused as such: loading it with pickle enabled is never suggested."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: {what} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointFileError(f"{path}: {what} file is empty (an interrupted write?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointFileError(f"{path}: {what} is truncated or corrupt ({type(e).__name__})") from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointFileError(f"{path}: not a {what} this suite can load safely: it holds objects other than "
                                  f"tensors and plain containers, or it is not a checkpoint ({first[:160]})") from None
    except RuntimeError as e:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch's zip format: readable start, broken rest
        why = "is truncated or corrupt" if zipped else "is not a readable"
        raise CheckpointFileError(f"{path}: {what} {why} ({str(e).splitlines()[0][:100]})") from None
    except Exception as e:  # the safe unpickler fails in many ways on bytes that are no checkpoint at all
        raise CheckpointFileError(f"{path}: not a {what}: its bytes are no torch checkpoint "
                                  f"({type(e).__name__})") from None


def weights_dir() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    checkout = Path(__file__).resolve().parent.parent / "weights"
    if (checkout / "registry.yaml").exists():
        return checkout
    return Path.cwd() / "weights"


def _registry_file() -> Path:
    for d in (weights_dir(), Path(__file__).resolve().parent.parent / "weights",
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
        out[name] = WeightsEntry(name=name, **fields)
    return out


def sha256sum(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        checksum = f"sha256 {entry.sha256}" if entry.sha256 else "sha256 not pinned"
        raise WeightsError(
            f"weights '{entry.name}' are not on this machine: place the file at {path} ({checksum}).{where} "
            "Nothing is downloaded at run time; see weights/README.md."
        )
    if entry.sha256:
        actual = sha256sum(path)
        if actual != entry.sha256:
            raise WeightsError(f"{path}: sha256 {actual} does not match the registered {entry.sha256} for '{entry.name}'")
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors safely: safetensors, or ``torch.load(weights_only=True)`` (unwrapping ``state_dict``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = load_checkpoint_file(path, "weights file")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.weights check NAME`` | ``hash FILE`` | ``list``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m transfer.weights")
    parser.add_argument("command", choices=["check", "hash", "list"])
    parser.add_argument("target", nargs="?")
    args = parser.parse_args(argv)
    if args.command == "list":
        for entry in load_registry().values():
            print(f"{entry.name:<24} {entry.file:<48} {entry.sha256 or '-'}")
    elif args.command == "hash":
        print(sha256sum(args.target))
    else:
        print(resolve(args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
