"""What the runner, ``transfer.predict`` and the tables may ask of a method, written down: :class:`Method` is the
contract, :class:`MethodModule` its defaults (every method subclasses it), :func:`check_method` the clear error for
a module that does not keep it. The data modules' side is ``datamodules.contract``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import lightning as L

from transfer.checkpoints import CompatibleCheckpointMixin


@runtime_checkable
class Method(Protocol):
    #: the target that un-targeted validation keys (``val/acc``) describe in result rows: ``source`` (a held-out
    #: source split), ``target`` (held-out target shots), or None (they repeat a per-target key)
    pooled_val_target: str | None
    #: ``prepare`` builds cached stages from the data (a toy's pre-training): the data is prepared before it runs
    has_stages: bool

    def prepare(self, datamodule, run: L.Trainer | None = None) -> None:
        """Stages before fitting, cached by their settings; ``run``: the Trainer whose device and precision they
        train with."""

    def attach_data(self, datamodule, stage: str = "predict") -> None:
        """Size or fill what depends on the data (heads, class texts) before a checkpoint is loaded into it."""

    @classmethod
    def pool_folds(cls, out: Path, fold_dirs: Sequence[Path]) -> None:
        """After ``fold=all``: pool what each fold wrote per case into ``out``."""


class MethodModule(CompatibleCheckpointMixin, L.LightningModule):
    """The base of every method: the contract's defaults (no stages, nothing sized by data, nothing to pool)."""

    pooled_val_target: str | None = "source"
    has_stages: bool = False

    def prepare(self, datamodule, run: L.Trainer | None = None) -> None:
        return None

    def attach_data(self, datamodule, stage: str = "predict") -> None:
        return None

    @classmethod
    def pool_folds(cls, out: Path, fold_dirs: Sequence[Path]) -> None:
        return None


def check_method(model: object) -> None:
    """A clear error for a module that does not keep the method contract."""
    missing = [name for name in ("pooled_val_target", "has_stages", "prepare", "attach_data", "pool_folds")
               if not hasattr(model, name)]
    if missing:
        raise TypeError(f"{type(model).__qualname__} is not a transfer method: it lacks {', '.join(missing)} "
                        f"(subclass transfer.methods.base.MethodModule)")
