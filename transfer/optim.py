"""Optimiser and scheduler overrides shared by every method: ``model.optimizer`` / ``model.scheduler``.

Each method keeps its published recipe (its parameter groups, learning rates and schedule) as the default, so
numbers do not change unless asked. From the command line a researcher swaps the optimiser or the schedule:

    model.optimizer='{name: SGD, momentum: 0.9, nesterov: true, weight_decay: 1e-3}'
    model.scheduler='{name: CosineAnnealingLR, T_max: 1000, interval: step}'

``name`` is a class in ``torch.optim`` / ``torch.optim.lr_scheduler`` or a dotted path to one. The method's
parameter groups are kept, with their learning rates (``model.lr`` and its per-group multipliers, e.g. SFDA's
0.1x backbone); an ``lr`` in the override sets the default for groups that have none. The specs are plain
dicts (no ``_target_``) so that they live in checkpoints' hyper-parameters and load with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Mapping

import torch


def _resolve(name: str, module) -> type:
    if "." in name:
        mod, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import '{name}': {e}") from e
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(module) if isinstance(getattr(module, n), type) and not n.startswith("_"))
        raise ValueError(f"unknown '{name}' in {module.__name__}; known: {', '.join(known)}")
    return cls


def _split(spec: Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    kwargs = dict(spec)
    name = kwargs.pop("name", None)
    if not name:
        raise ValueError(f"model.{what} needs a 'name' (a class in torch.optim{'.lr_scheduler' if what == 'scheduler' else ''}), "
                         f"got {dict(spec)}")
    return str(name), kwargs


def optimizer_class(spec: Mapping[str, Any]) -> tuple[type, dict[str, Any]]:
    """The class and keyword arguments a ``model.optimizer`` spec names (for wrappers such as SAM)."""
    name, kwargs = _split(spec, "optimizer")
    return _resolve(name, torch.optim), kwargs


def make_optimizer(groups: Iterable, spec: Mapping[str, Any] | None,
                   default: Callable[[Iterable], torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """The method's recipe ``default(groups)``, or the optimiser ``spec`` names over the same groups."""
    if not spec:
        return default(groups)
    cls, kwargs = optimizer_class(spec)
    return cls(groups, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: Mapping[str, Any] | None,
                   default: Callable[[torch.optim.Optimizer], Any] | None = None) -> dict | None:
    """Lightning's ``lr_scheduler`` dict: the method's recipe, or the scheduler ``spec`` names (``interval``:
    step | epoch, default step; ``none`` turns a recipe's schedule off)."""
    if not spec:
        return default(optimizer) if default else None
    name, kwargs = _split(spec, "scheduler")
    if name == "none":
        return None
    interval = kwargs.pop("interval", "step")
    if interval not in ("step", "epoch"):
        raise ValueError(f"model.scheduler.interval must be step or epoch, got '{interval}'")
    return {"scheduler": _resolve(name, torch.optim.lr_scheduler)(optimizer, **kwargs), "interval": interval}


def configured(optimizer: torch.optim.Optimizer, scheduler: dict | None):
    """What ``configure_optimizers`` returns."""
    return {"optimizer": optimizer, "lr_scheduler": scheduler} if scheduler else optimizer
