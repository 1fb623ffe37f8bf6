"""Loading checkpoint files safely: ``torch.load(weights_only=True)`` for every ``.pt/.pth/.ckpt`` the suite reads
(backbones, detectors, fairseq checkpoints, Lightning checkpoints, translators), safetensors for the rest. Released
checkpoints keep more than tensors; what they keep loads as data or as an inert stand-in, and nothing from the
file ever runs."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


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
        raise CheckpointFileError(f"{path}: the file pickles a whole {obj.qualified_name} object, not a state dict; save "
                           f"its state_dict() where that class is installed")
    if not isinstance(obj, dict):
        raise CheckpointFileError(f"{path}: expected a state dict, found {type(obj).__name__}")
    odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if odd:
        v = obj[odd[0]]
        what = f"a pickled {v.qualified_name}, not loaded" if isinstance(v, Inert) else type(v).__name__
        raise CheckpointFileError(f"{path}: {len(odd)} entries of its state dict are not tensors (e.g. '{odd[0]}': {what})")
    return obj
