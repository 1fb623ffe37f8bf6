"""How a state dict fits a model: the one comparison every loader makes (detectors, wav2vec2, classifiers, CLIP,
Lightning checkpoints, adapter files), so every mismatch is reported the same way. torch only: any layer may use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch


@dataclass
class StateDictFit:
    """How a state dict fits a model: keys the model has and the file lacks, keys the model does not know, and
    keys present in both with another shape."""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mis_shaped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped)

    def describe(self) -> str:
        example = (self.mis_shaped or self.missing or self.unexpected or [""])[0]
        return (f"{len(self.mis_shaped)} tensors of another shape, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected (e.g. '{example}')")


class StateDictMismatchError(RuntimeError):
    """A state dict (checkpoint, weights file, adapter file, translator) does not fit the model it is loaded into.
    ``fit`` holds the comparison when there was one (None when the mismatch was found from metadata alone)."""

    def __init__(self, message: str, fit: StateDictFit | None = None):
        super().__init__(message)
        self.fit = fit


def require_fit(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str, target: str,
                hint: str = "", ignore: Callable[[str], bool] = lambda k: False) -> StateDictFit:
    """:func:`state_dict_fit`, raising :class:`StateDictMismatchError` ("SOURCE does not fit TARGET: ...") unless
    every tensor fits."""
    fit = state_dict_fit(own, state, ignore)
    if not fit.ok:
        raise StateDictMismatchError(f"{source} does not fit {target}: {fit.describe()}" + (f"; {hint}" if hint else ""),
                                     fit)
    return fit


def state_dict_fit(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                   ignore: Callable[[str], bool] = lambda k: False) -> StateDictFit:
    """The one comparison every loader makes (``ignore`` drops keys from both sides, e.g. BatchNorm counters)."""
    own = {k: v for k, v in own.items() if not ignore(k)}
    state = {k: v for k, v in state.items() if not ignore(k)}
    return StateDictFit(missing=[k for k in own if k not in state],
                        unexpected=[k for k in state if k not in own],
                        mis_shaped=[k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)])
