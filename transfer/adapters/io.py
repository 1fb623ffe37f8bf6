"""Adapter-only checkpoints: the trainable tensors as safetensors + their configuration as JSON.

A folder holds ``adapter_model.safetensors`` and ``adapter_config.json`` (the JSON is also stored in the
safetensors metadata, so the tensor file alone is self-describing). Loading refuses a file whose adapter
settings or base weight shapes differ from the model's, naming the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from datamodules.files import atomic_path, atomic_write_text

from .config import AdapterConfig
from .inject import _set, adapter_layers, mark_trainable
from .layer import AdapterLayer
from ..safeload import CheckpointFileError
from ..statedict import StateDictFit, StateDictMismatchError, state_dict_fit

FORMAT = "transfer-adapters/1"
TENSORS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _layer_spec(layer: AdapterLayer) -> dict:
    return {"kind": layer.kind, "rank": layer.rank, "alpha": layer.alpha, "dora": layer.dora,
            "dora_axis": layer.dora_axis, "base_type": type(layer.base).__name__,
            "weight_shape": list(layer.base.weight.shape)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter factors, DoRA magnitudes and any other trainable tensor (heads, norms) — not the frozen base."""
    layers = adapter_layers(model)
    keep = {f"{n}.{p}" for n, layer in layers.items() for p, _ in layer.named_parameters() if not p.startswith("base.")}
    keep |= {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in model.state_dict().items() if k in keep}


def save_adapters(model: nn.Module, folder: str | Path, config: AdapterConfig | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("the model carries no adapter layers; nothing to save")
    meta = {"format": FORMAT, "config": config.to_dict() if config else None,
            "modules": {n: _layer_spec(layer) for n, layer in layers.items()}}
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    with atomic_path(folder / TENSORS) as tmp:  # unique: no two writers share it
        save_file(tensors, str(tmp), metadata={"transfer": json.dumps(meta)})
    atomic_write_text(folder / CONFIG, json.dumps(meta, indent=1))
    return folder


def read_adapter_meta(folder: str | Path) -> dict:
    path = Path(folder) / TENSORS
    if not path.exists():
        raise CheckpointFileError(f"{path}: no adapter file")
    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("transfer")
    if raw is None:
        raise CheckpointFileError(f"{path}: not a transfer adapter file (no 'transfer' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise CheckpointFileError(f"{path}: unknown adapter format {meta.get('format')!r}")
    return meta


def load_adapters(model: nn.Module, folder: str | Path, inject_missing: bool = True) -> nn.Module:
    """Load adapters saved by :func:`save_adapters`; wraps plain modules first when ``inject_missing``."""
    path = Path(folder) / TENSORS
    meta = read_adapter_meta(folder)
    for name, spec in meta["modules"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise StateDictMismatchError(f"{path}: module '{name}' does not exist in this model") from None
        base = module.base if isinstance(module, AdapterLayer) else module
        if type(base).__name__ != spec["base_type"] or list(base.weight.shape) != spec["weight_shape"]:
            raise StateDictMismatchError(
                f"{path}: module '{name}' was {spec['base_type']} {tuple(spec['weight_shape'])} when saved, "
                f"this model has {type(base).__name__} {tuple(base.weight.shape)}"
            )
        wanted = {k: spec[k] for k in ("kind", "rank", "alpha", "dora", "dora_axis")}
        if isinstance(module, AdapterLayer):
            have = {k: v for k, v in _layer_spec(module).items() if k in wanted}
            if have != wanted:
                raise StateDictMismatchError(f"{path}: module '{name}' carries {have}, the file holds {wanted}")
        elif inject_missing:
            _set(model, name, AdapterLayer(module, AdapterConfig(**wanted)))
        else:
            raise StateDictMismatchError(f"{path}: module '{name}' has no adapter (use inject_missing=True)")
    tensors = load_file(str(path))
    fit = state_dict_fit(model.state_dict(), tensors)  # an adapter file holds a part of the model: none missing
    if fit.unexpected or fit.mis_shaped:
        part = StateDictFit([], fit.unexpected, fit.mis_shaped)
        raise StateDictMismatchError(f"{path}: tensors do not fit this model: {part.describe()}", part)
    model.load_state_dict(tensors, strict=False)
    if meta.get("config"):
        mark_trainable(model, AdapterConfig(**meta["config"]))
    return model


_ADAPTER_TENSORS = ("lora_A", "lora_B", "cp_out", "cp_in", "cp_spatial", "magnitude", "moe_router")


def load_base_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict",
                      prefix: str = "") -> None:
    """Load weights saved from the plain (un-adapted) model into a model that may carry adapter wrappers:
    ``x.weight`` goes to ``x.base.weight`` where ``x`` was wrapped. Adapter tensors keep their values."""
    own = model.state_dict()
    mapped = {}
    for k, v in state.items():
        k = prefix + k.removeprefix("net.") if prefix else k.removeprefix("net.")
        if k not in own:
            head, _, leaf = k.rpartition(".")
            k = f"{head}.base.{leaf}" if head else k
        mapped[k] = v
    fit = state_dict_fit(own, mapped, ignore=lambda k: any(t in k for t in _ADAPTER_TENSORS)
                         or k.endswith("num_batches_tracked") or not k.startswith(prefix))
    if fit.unexpected or fit.mis_shaped:
        raise StateDictMismatchError(f"{source}: tensor '{(fit.unexpected + fit.mis_shaped)[0]}' does not fit this "
                                     f"model ({fit.describe()}); saved from another architecture?", fit)
    if fit.missing:
        raise StateDictMismatchError(f"{source}: {len(fit.missing)} tensors of the model are missing "
                                     f"(e.g. '{fit.missing[0]}')", fit)
    model.load_state_dict(mapped, strict=False)
