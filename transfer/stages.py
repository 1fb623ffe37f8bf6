"""Expensive stages cached on disk (a toy's pre-trained detector, a pretext backbone, a tiny CLIP, a source model).

One way for all of them: the file is built under an exclusive lock (``fcntl``) by the first process that needs it;
others wait and then read it (first writer wins). Files are written to a unique temporary name in the destination
folder and renamed into place, so no reader ever sees half a file and two writers never share a temporary file.
A stage's file name comes from ``stage_file`` (its settings, the code that trains it, the device and precision it
trains with) and a Lightning stage trains with ``stage_trainer`` (the run's device and precision, one process).
"""

from __future__ import annotations

import hashlib
import importlib
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from datamodules.files import atomic_path, content_key, file_lock


@contextmanager
def rng_preserved() -> Iterator[None]:
    """Run a block without moving the caller's random streams (torch CPU and CUDA, numpy, ``random``): a stage built
    on a cache miss (which seeds and trains) and the same stage read from the cache leave the run that follows
    with the same random state, so a result does not depend on what was cached before."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def stage_key(settings: Mapping) -> str:
    """A short stable hash of the settings that decide a stage's output."""
    return content_key(settings, 12)


def code_version(*modules: str) -> str:
    """The package version and a hash of the named modules' source files: what a stage's key carries so that an edit
    to the code that trains it builds a new file instead of reading one trained by the old code."""
    import transfer

    digest = hashlib.sha1()
    for name in sorted(modules):
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return f"{transfer.__version__}+{digest.hexdigest()[:12]}"


def stage_file(cache_dir: str | Path, name: str, settings: Mapping, code: tuple[str, ...] = (), run=None) -> Path:
    """Where a cached stage lives: ``<cache_dir>/<name>-<key>.safetensors``. The key hashes ``settings`` (what decides
    the stage's output; a ``cache_dir`` entry in them is left out), :func:`code_version` of the ``code`` modules and
    the device type and precision the stage trains with (:func:`stage_device` of the ``run`` Trainer)."""
    settings = {k: v for k, v in settings.items() if k != "cache_dir"}
    key = stage_key({"settings": settings, "code": code_version(*code), "device": stage_device(run)})
    return Path(cache_dir) / f"{name}-{key}.safetensors"


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """safetensors, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def build_file_once(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(path)`` once, by the first process that needs the file (others wait on the lock and reuse it), with
    the caller's random state left as it was."""
    path = Path(path)
    if path.exists():
        return path
    with file_lock(path):
        if not path.exists():  # another process may have built it while we waited
            with rng_preserved():
                write(path)
    return path


def cached_stage(path: str | Path, build: Callable[[], Mapping[str, torch.Tensor]],
                 metadata: dict[str, str] | None = None) -> Path:
    """The stage's tensors at ``path``: built once by the first process (``build`` returns them), read by all."""
    return build_file_once(path, lambda p: save_tensors(build(), p, metadata))


def stage_device(run=None) -> dict[str, str]:
    """The device type and precision of the run's Trainer ``run`` (CPU, 32-bit without one): a stage trains the
    way its run does, and its file is keyed by them (a GPU bf16 stage is not a CPU fp32 one)."""
    if run is None:
        return {"device": "cpu", "precision": "32-true"}
    return {"device": run.strategy.root_device.type, "precision": str(run.precision)}


def stage_trainer(run=None, **kwargs):
    """The Trainer a cached stage trains with: one process on the run's own device (``run.strategy.root_device``) and
    precision, nothing logged, saved or printed; ``kwargs`` are the stage's own (steps, clipping, validation). Under
    DDP the process that builds the stage (the first to take its lock) trains it alone on its device."""
    import lightning as L

    device = run.strategy.root_device if run is not None else torch.device("cpu")
    devices = [device.index] if device.type == "cuda" and device.index is not None else 1
    return L.Trainer(accelerator=device.type, devices=devices, precision=stage_device(run)["precision"], logger=False,
                     enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False, **kwargs)
