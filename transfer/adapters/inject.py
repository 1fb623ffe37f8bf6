"""Swap matching modules for :class:`AdapterLayer` in place; mark only adapter params trainable; merge."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .config import AdapterConfig
from .layer import SUPPORTED, AdapterLayer

_NORMS = (_NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass
class InjectionReport:
    rows: list[tuple[str, str, tuple, int]] = field(default_factory=list)  # name, type, weight shape, params
    trainable: int = 0
    total: int = 0

    @property
    def adapted(self) -> list[str]:
        return [r[0] for r in self.rows]

    def __str__(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [6])
        lines = [f"{'module':<{width}}  {'type':<16} {'weight':<22} {'adapter params':>14}"]
        lines += [f"{n:<{width}}  {t:<16} {str(tuple(s)):<22} {p:>14,}" for n, t, s, p in self.rows]
        pct = 100 * self.trainable / max(self.total, 1)
        lines.append(f"{len(self.rows)} modules adapted; trainable {self.trainable:,} of {self.total:,} ({pct:.2f} %)")
        return "\n".join(lines)


def _matches(config: AdapterConfig, model: nn.Module, name: str) -> bool:
    target = config.target
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    groups = getattr(model, "adapter_groups", None)
    groups = groups() if callable(groups) else (groups or {})
    for entry in target:
        if entry in groups:
            if any(name == g or name.startswith(g + ".") for g in groups[entry]):
                return True
        elif name == entry or name.endswith("." + entry):
            return True
    return False


def _no_match_error(config: AdapterConfig, names: list[str], unsupported: list[tuple[str, str]]) -> Exception:
    if unsupported:
        kinds = sorted({t for _, t in unsupported})
        return TypeError(
            f"target {config.target!r} matched only unsupported modules ({', '.join(kinds)}, e.g. "
            f"'{unsupported[0][0]}'); supported types: {', '.join(t.__name__ for t in SUPPORTED)}"
        )
    query = config.target if isinstance(config.target, str) else " ".join(config.target)
    close = difflib.get_close_matches(query, names, n=6, cutoff=0.3) or names[:6]
    return ValueError(f"target {config.target!r} matches no module; close module names: {', '.join(close)}")


def inject(model: nn.Module, config: AdapterConfig) -> InjectionReport:
    """Wrap every supported module whose name matches ``config.target``; returns a report."""
    names, chosen, unsupported = [], [], []
    for name, module in model.named_modules():
        if not name or isinstance(_parent(model, name), AdapterLayer):  # the wrapped base itself
            continue
        names.append(name)
        if not _matches(config, model, name):
            continue
        if isinstance(module, AdapterLayer):
            raise ValueError(f"module '{name}' already carries an adapter")
        if isinstance(module, SUPPORTED):
            chosen.append(name)
        elif not list(module.children()):
            unsupported.append((name, type(module).__name__))
        elif not isinstance(config.target, str) and name in config.target:
            raise TypeError(f"module '{name}' is a {type(module).__name__}, which cannot carry an adapter")
    if not chosen:
        raise _no_match_error(config, [n for n in names if isinstance(model.get_submodule(n), SUPPORTED)] or names,
                              unsupported)
    report = InjectionReport()
    for name in chosen:
        base = model.get_submodule(name)
        layer = AdapterLayer(base, config)
        _set(model, name, layer)
        report.rows.append((name, type(base).__name__, tuple(base.weight.shape),
                            sum(p.numel() for p in layer.adapter_parameters())))
    mark_trainable(model, config)
    report.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report.total = sum(p.numel() for p in model.parameters())
    return report


def mark_trainable(model: nn.Module, config: AdapterConfig) -> None:
    """Freeze everything, then unfreeze adapter factors, optionally norms, and ``modules_to_save``."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            for p in module.adapter_parameters():
                p.requires_grad_(True)
        elif config.train_norms and isinstance(module, _NORMS):
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
        if any(re.fullmatch(rx, name) for rx in config.modules_to_save):
            for p in module.parameters():
                p.requires_grad_(True)


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def merge_all(model: nn.Module) -> nn.Module:
    """Replace every adapter layer by a plain module with the effective weight (in place; returns model)."""
    for name, layer in adapter_layers(model).items():
        _set(model, name, layer.to_plain())
    return model


def _parent(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    setattr(_parent(model, name), name.rsplit(".", 1)[-1], module)
