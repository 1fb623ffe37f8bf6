"""Typed schemas of the run config, so a wrong type fails at composition (before a run folder exists):
``trainer.max_epochs=abc`` or ``seed=x`` is refused by Hydra with the key and the expected type.

The trainer schema is derived from ``lightning.pytorch.Trainer``'s own signature: every argument with a plain type
(int, float, bool, str, optionally None) is typed, the rest accept anything, and unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import typing
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

PLAIN = {"int": int, "float": float, "bool": bool, "str": str}


def _type_name(tp) -> str:
    """``int``, ``Optional[int]`` (OmegaConf can check these) or ``Any``."""
    for name, plain in PLAIN.items():
        if tp is plain:
            return name
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and len(args) == 2 and type(None) in args:
        inner = _type_name(next(a for a in args if a is not type(None)))
        if inner != "Any":
            return f"Optional[{inner}]"
    return "Any"


def trainer_fields_from_lightning() -> list[list]:
    """``[name, type name, default]`` for every argument of ``lightning.pytorch.Trainer``."""
    import lightning as L

    hints = typing.get_type_hints(L.Trainer.__init__)
    fields = []
    for name, p in inspect.signature(L.Trainer.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        tp = _type_name(hints.get(name, Any))
        default = p.default if isinstance(p.default, (int, float, bool, str, type(None))) else None
        if tp in PLAIN and default is None:
            tp = f"Optional[{tp}]"
        fields.append([name, tp, default])
    return fields


def trainer_fields() -> list[list]:
    """:func:`trainer_fields_from_lightning`, cached per Lightning version: importing Lightning takes seconds, and a
    command refused at composition (a typo, a missing dataset) should answer without it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transfer" / \
        f"trainer_schema-lightning-{version('lightning')}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        fields = trainer_fields_from_lightning()
    try:
        from datamodules.files import atomic_write_text

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(fields))
    except OSError:
        pass  # a read-only home: derive it each time
    return fields


def trainer_schema() -> type:
    types = {**PLAIN, "Any": Any, **{f"Optional[{n}]": Optional[t] for n, t in PLAIN.items()}}
    fields = [("_target_", str, field(default="lightning.pytorch.Trainer"))]
    fields += [(name, types[tp], field(default=default)) for name, tp, default in trainer_fields()]
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


def register() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunSchema)
