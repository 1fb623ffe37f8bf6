"""Typed schemas of the run config, so a wrong type fails at composition (before a run folder exists):
``trainer.max_epochs=abc`` or ``seed=x`` is refused by Hydra with the key and the expected type.

The trainer schema is derived from ``lightning.pytorch.Trainer``'s own signature: every argument with a plain type
(int, float, bool, str, optionally None) is typed, the rest accept anything, and unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning as L
from hydra.core.config_store import ConfigStore

PLAIN = (int, float, bool, str)


def _plain(tp) -> Any:
    """``tp`` when OmegaConf can check it (a plain type, optionally None), else ``Any``."""
    if tp in PLAIN:
        return tp
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        if inner in PLAIN:
            return Optional[inner]
    return Any


def trainer_schema() -> type:
    hints = typing.get_type_hints(L.Trainer.__init__)
    fields = [("_target_", str, field(default="lightning.pytorch.Trainer"))]
    for name, p in inspect.signature(L.Trainer.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        tp = _plain(hints.get(name, Any))
        default = p.default if isinstance(p.default, (*PLAIN, type(None))) else None
        if tp is not Any and default is None and typing.get_origin(tp) is not typing.Union:
            tp = Optional[tp]
        fields.append((name, tp, field(default=default)))
    return dataclasses.make_dataclass("TrainerSchema", fields)


TrainerSchema = trainer_schema()


@dataclass
class WeightsSchema:
    fetch: bool = False  # download missing registered weights on first use (python -m transfer.weights fetch)


@dataclass
class RunSchema:
    experiment_name: str = "default"
    seed: int = 0
    num_threads: Optional[int] = None
    ckpt_path: Optional[str] = None
    train: bool = True
    test: bool = True
    fold: Any = None  # an index, or "all"
    variants: Any = None
    variant: Optional[str] = None
    override_sets: Any = None
    scenarios: Any = None
    sweep: Any = None
    sweep_shard: Optional[str] = None
    sweep_point: Optional[str] = None
    select: Any = None
    report_metrics: Any = None
    method: Optional[str] = None
    data: Any = None
    model: Any = None
    selection: Any = None
    callbacks: Any = None
    logger: Any = None
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    paths: Any = None
    weights: WeightsSchema = field(default_factory=WeightsSchema)
    detector: Any = None
    translator: Any = None


def register() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunSchema)
