"""What the runner may ask of every data module (the data layer's side of the contract; methods keep theirs in
``transfer/methods/base.py``). Every data module here subclasses ``SeededTrainData`` and a LightningDataModule and
implements ``data_summary``."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TransferData(Protocol):
    #: the run's seed; the training order is a function of (seed, epoch), so a resumed run continues exactly
    train_seed: int

    def prepare_data(self) -> None:
        """Build or check what is on disk (generated data, caches); idempotent, safe in every process."""

    def setup(self, stage: str) -> None:
        """Read the data: lists, splits, folds."""

    def data_summary(self) -> dict[str, Any]:
        """What was read: layout, counts per split, class names in label order, drops, notes
        (``data_summary.json``)."""


def check_data_module(dm: object) -> None:
    """A clear error for a data module that does not keep the contract."""
    missing = [name for name in ("train_seed", "prepare_data", "setup", "data_summary") if not hasattr(dm, name)]
    if missing:
        raise TypeError(f"{type(dm).__qualname__} is not a transfer data module: it lacks {', '.join(missing)} "
                        f"(subclass datamodules.samplers.SeededTrainData and lightning's LightningDataModule, and "
                        f"implement data_summary())")
