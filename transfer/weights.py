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


class CheckpointFileError(RuntimeError):
    """A checkpoint file is missing, empty, truncated or not a checkpoint at all."""


#: Data-only types that released checkpoints keep beside their tensors, loaded as themselves: fairseq's argparse
#: ``args``, its omegaconf ``cfg``, numpy numbers and arrays from meters and schedulers. Nothing here runs code from
#: the file: each is built from plain values (``__setstate__`` of a dict, ``ndarray`` from raw bytes).
DATA_ONLY = (
    "argparse.Namespace", "typing.Any", "builtins.object", "collections.defaultdict",
    "numpy.dtype", "numpy.ndarray", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode", "omegaconf.nodes.BooleanNode", "omegaconf.nodes.BytesNode", "omegaconf.nodes.PathNode",
)
#: Modules whose globals a checkpoint never needs: a file naming them is refused outright (torch blocks them too).
HOSTILE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "builtins.eval", "builtins.exec", "builtins.__import__",
                   "builtins.compile", "builtins.open", "importlib", "runpy", "shutil", "socket", "pty", "webbrowser")


class Inert:
    """Stands in for a class or function a checkpoint names that is not data-only (fairseq's meters, a scheduler,
    a model class): built from its pickled arguments and state without importing or running anything of the
    original, and never called. Its ``qualified_name`` says what it replaced."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert stand-in for {self.qualified_name}>"

    @classmethod
    def named(cls, qualified: str) -> type:
        return type(f"Inert[{qualified}]", (cls,), {"qualified_name": qualified})


def _data_only_object(name: str):
    import importlib
    import warnings

    module, _, attr = name.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy.core is numpy 2's deprecated alias of numpy._core: fine to read
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None


def _numpy_dtype_classes(names: list[str]) -> list[tuple]:
    """A pickled ``numpy.dtype`` is rebuilt as an instance of its class (``numpy.dtypes.Float64DType``, ...),
    which the file does not name: with ``numpy.dtype`` allowed, those data-only classes are too."""
    if "numpy.dtype" not in names:
        return []
    import numpy as np

    return [(getattr(np.dtypes, n), f"numpy.dtypes.{n}") for n in dir(np.dtypes) if n.endswith("DType")]


def checkpoint_globals(path: Path) -> tuple[list, list[str]]:
    """For a file in torch's zip format: what to allow (data-only types as themselves, anything else as an
    :class:`Inert` stand-in) and the names stood in for. A global from a module no checkpoint needs (``os``,
    ``subprocess``, ``builtins.eval`` ...) is refused, listing every such name."""
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # the legacy (pre-zip) format: no scan, the plain weights-only load decides
        return [], []
    hostile = [g for g in names if g.startswith(tuple(m + "." for m in HOSTILE_MODULES)) or g in HOSTILE_MODULES]
    if hostile:
        raise CheckpointFileError(f"{path}: refused: its pickled data names {', '.join(hostile)}, which no "
                                  f"checkpoint needs (a file made to run code when loaded?). Nothing was executed")
    allow, stood_in = _numpy_dtype_classes(names), []
    for g in names:
        if any(g == a for _, a in allow):
            continue
        obj = _data_only_object(g) if g in DATA_ONLY else None
        if obj is not None:
            allow.append((obj, g))
        else:
            allow.append((Inert.named(g), g))
            stood_in.append(g)
    return allow, stood_in


def load_checkpoint_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` for any ``.pt/.pth/.ckpt``, with errors that say what is wrong with the
    file. Released checkpoints keep more than tensors (fairseq: an argparse Namespace or omegaconf ``cfg``, numpy
    numbers from meters and schedulers in ``extra_state``): data-only types (:data:`DATA_ONLY`) load as themselves,
    any other class or function the file names becomes an :class:`Inert` stand-in (logged), and a file naming
    ``os``, ``subprocess``, ``eval`` and the like is refused. Pickle is never enabled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: {what} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointFileError(f"{path}: {what} file is empty (an interrupted write?)")
    allow, stood_in = checkpoint_globals(path) if zipfile.is_zipfile(path) else ([], [])
    try:
        with torch.serialization.safe_globals(allow):
            obj = torch.load(path, map_location="cpu", weights_only=True)
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
    if stood_in:
        import logging

        logging.getLogger("transfer").info("%s: %d non-data objects left unloaded (inert stand-ins): %s", path,
                                           len(stood_in), ", ".join(stood_in))
    return obj


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
        from transfer.fetch import ENV_FETCH, fetch, fetch_enabled

        if fetch_enabled() and (entry.url or entry.hf_repo):
            return fetch(entry.name, registry, root)
        where = f" Obtain it from {entry.source or entry.hub}." if (entry.source or entry.hub) else ""
        checksum = f"sha256 {entry.sha256}" if entry.sha256 else (
            f"sha256 starting {entry.sha256_prefix}" if entry.sha256_prefix else "sha256 not pinned")
        how = (f"download it with `python -m transfer.weights fetch {entry.name}` (or let a run fetch it: "
               f"weights.fetch=true / {ENV_FETCH}=1), or place the file at {path}") if (entry.url or entry.hf_repo) \
            else f"place the file at {path}"
        raise WeightsError(
            f"weights '{entry.name}' are not on this machine: {how} ({checksum}).{where} "
            "Nothing is downloaded unless asked; see weights/README.md."
        )
    from transfer.fetch import verify

    verify(path, entry, root)
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors safely: safetensors, or ``torch.load(weights_only=True)`` (unwrapping ``state_dict``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return state_dict_of(load_checkpoint_file(path, "weights file"), path)


def state_dict_of(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: itself, or under ``state_dict`` / ``model`` / ``model_state_dict``."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if isinstance(obj, Inert):
        raise WeightsError(f"{path}: the file pickles a whole {obj.qualified_name} object, not a state dict; save "
                           f"its state_dict() where that class is installed")
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if odd:
        v = obj[odd[0]]
        what = f"a pickled {v.qualified_name}, not loaded" if isinstance(v, Inert) else type(v).__name__
        raise WeightsError(f"{path}: {len(odd)} entries of its state dict are not tensors (e.g. '{odd[0]}': {what})")
    return obj


def names_in_experiment(experiment: str, overrides: list[str] | None = None) -> list[str]:
    """Registered weights names an experiment refers to (any string value of its composed config)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from transfer import experiments

    experiments.register()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="transfer.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *(overrides or [])])
    registry, found = load_registry(), []

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and node in registry and node not in found:
            found.append(node)

    walk(OmegaConf.to_container(cfg, resolve=False))
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.weights list | check [NAME...] | fetch NAME... | fetch --experiment NAME | hash FILE |
    lock [NAME... | --experiment NAME]``."""
    import argparse

    from transfer import fetch as fetching

    parser = argparse.ArgumentParser(prog="python -m transfer.weights")
    parser.add_argument("command", choices=["list", "check", "fetch", "hash", "lock"])
    parser.add_argument("names", nargs="*", help="registered names (hash: a file)")
    parser.add_argument("--experiment", help="fetch every weight this experiment needs")
    parser.add_argument("--registry", help="another registry.yaml")
    parser.add_argument("--root", help="another weights folder")
    args = parser.parse_args(argv)
    registry = load_registry(args.registry)
    root = Path(args.root) if args.root else weights_dir()
    if args.command == "list":
        lock = load_lock(root)
        for entry in registry.values():
            how = {"sha256": f"sha256 {entry.sha256}", "hub": "hub-stated sha256 at download",
                   "lock": "your lab's lock"}.get(entry.verify or "", entry.sha256 or "-")
            locked = " (locked)" if entry.name in lock else ""
            print(f"{entry.name:<32} {entry.file:<52} {how}{locked}")
        return 0
    if args.command == "hash":
        for f in args.names:
            print(f"{sha256sum(f)}  {f}")
        return 0
    names = args.names or (names_in_experiment(args.experiment) if args.experiment else [])
    unknown = [n for n in names if n not in registry]
    if unknown:
        parser.error(f"not registered: {', '.join(unknown)} (python -m transfer.weights list)")
    if args.command == "lock":
        return write_lock(names or [n for n, e in registry.items() if (root / e.file).exists()], registry, root)
    if args.command == "check":
        bad = 0
        for name in names or list(registry):
            state = fetching.status(name, registry[name], root)
            bad += state in ("missing", "checksum MISMATCH")
            hint = f"   -> python -m transfer.weights fetch {name}" if state == "missing" and \
                (registry[name].url or registry[name].hf_repo) else ""
            print(f"{name:<32} {state}{hint}")
        return 1 if bad else 0
    if not names:
        parser.error("fetch needs registered names or --experiment NAME")
    for name in names:
        try:
            path = fetching.fetch(name, registry, root)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {path}")
    return 0


def write_lock(names: list[str], registry: dict[str, WeightsEntry], root: Path) -> int:
    """``<root>/lock.yaml``: name, file, size, sha256 and source (url, or hub repo + the revision served) of each
    file on this machine (checked against the registry's pins first). Fetch, check and every run then refuse a file
    whose bytes differ, so a lab that commits its lock gets the same weights on every machine."""
    import json

    from transfer.fetch import origin_file, verify
    from transfer.records import atomic_write_text

    missing = [n for n in names if not (root / registry[n].file).exists()]
    if missing:
        print(f"error: not on this machine: {', '.join(missing)}; fetch first: python -m transfer.weights fetch "
              f"{' '.join(missing)}", file=sys.stderr)
        return 1
    if not names:
        print(f"error: no registered weights under {root} to lock", file=sys.stderr)
        return 1
    lock = load_lock(root)
    for name in names:
        entry, path = registry[name], root / registry[name].file
        verify(path, entry, root, use_lock=False)
        origin = json.loads(origin_file(path).read_text()) if origin_file(path).is_file() else {}
        record = {"file": entry.file, "size": path.stat().st_size, "sha256": sha256sum(path)}
        if entry.url:
            record["url"] = entry.url
        if entry.hf_repo:
            record.update(hf_repo=entry.hf_repo, hf_file=entry.hf_file, revision=origin.get("revision") or entry.revision)
        lock[name] = record
        print(f"{name:<32} {record['sha256']}  {record['size']:,} bytes")
    header = ("# Weights as this lab uses them, written by `python -m transfer.weights lock`: fetch, check and every\n"
              "# run refuse a file whose sha256 differs. Commit it beside your experiments.\n")
    atomic_write_text(root / LOCK_FILE, header + yaml.safe_dump(lock, sort_keys=True))
    print(f"-> {root / LOCK_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
