"""Optimiser and scheduler overrides shared by every method: ``model.optimizer`` / ``model.scheduler``.

Each method keeps its published recipe (its parameter groups, learning rates and schedule) as the default, so
numbers do not change unless asked. From the command line a researcher swaps the optimiser or the schedule:

    model.optimizer='{name: SGD, momentum: 0.9, nesterov: true, weight_decay: 1e-3}'
    model.scheduler='{name: CosineAnnealingLR, T_max: 1000, interval: step}'

``name`` is a class in ``torch.optim`` / ``torch.optim.lr_scheduler`` or a dotted path to one. Hydra's partial form
(lightning-hydra-template's) means the same and is stored as the plain one:

    model.optimizer='{_target_: torch.optim.SGD, _partial_: true, momentum: 0.9}'

The method's
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


def plain_spec(spec: Mapping[str, Any] | None, what: str = "optimizer") -> dict[str, Any] | None:
    """``spec`` as a ``{name: ...}`` dict: Hydra's ``{_target_: ..., _partial_: true, ...}`` is rewritten so that it
    is not instantiated into a ``functools.partial`` (which a ``weights_only`` checkpoint cannot hold)."""
    if not spec or "_target_" not in spec:
        return spec
    kwargs = dict(spec)
    if kwargs.pop("_partial_", True) is not True:
        raise ValueError(f"model.{what} with a _target_ must be _partial_: true (the method supplies its parameters), "
                         f"got {dict(spec)}")
    if "name" in kwargs:
        raise ValueError(f"model.{what} names its class twice (name and _target_): {dict(spec)}")
    kwargs.pop("_recursive_", None), kwargs.pop("_convert_", None)
    return {"name": kwargs.pop("_target_"), **kwargs}


def plain_specs(model_cfg):
    """A model config (DictConfig) with its ``optimizer`` / ``scheduler`` in the plain form, ready to instantiate."""
    from omegaconf import OmegaConf, open_dict

    out = model_cfg.copy()
    for what in ("optimizer", "scheduler"):
        node = out.get(what)
        if node is not None and OmegaConf.is_dict(node) and "_target_" in node:
            plain = plain_spec(OmegaConf.to_container(node, resolve=True), what)
            with open_dict(out):
                out[what] = plain
    return out


def _split(spec: Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    kwargs = dict(plain_spec(spec, what))
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
