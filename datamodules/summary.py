"""What a data module read: the layout it found, counts per split, class order, what it dropped and why.

Every data module fills one :class:`DataSummary` during ``setup``; ``python -m transfer.data check`` prints it
and every run writes it as ``data_summary.json`` beside its results. Anything guessed, dropped or defaulted
goes through :meth:`DataSummary.drop` or :meth:`DataSummary.note`, which also log it, so nothing is silent.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("datamodules")


@dataclass
class DataSummary:
    layout: str = ""
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    classes: list[str] | None = None
    dropped: Counter = field(default_factory=Counter)
    official: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    compare_official: bool = True  # False for generated data laid out like a release

    def count(self, split: str, name: str, n: int) -> None:
        self.splits.setdefault(split, {})[name] = int(n)

    def drop(self, reason: str, n: int = 1, where: str = "") -> None:
        """Items left out for ``reason``; logged once per call."""
        if n:
            self.dropped[reason] += int(n)
            log.warning("%s%d dropped: %s", f"{where}: " if where else "", n, reason)

    def note(self, text: str) -> None:
        """A fallback or a default that a user should know about (logged as a warning)."""
        if text not in self.notes:
            self.notes.append(text)
            log.warning(text)

    def expect(self, key: str, expected: int, found: int) -> None:
        """Compare with the dataset's published count (an incomplete download shows here)."""
        if not self.compare_official:
            return
        self.official[key] = {"expected": int(expected), "found": int(found)}
        if expected != found:
            self.note(f"{key}: {found} items found, the official release has {expected} (incomplete or modified copy?)")

    def as_dict(self) -> dict:
        out = {"layout": self.layout, "splits": self.splits, "dropped": dict(self.dropped)}
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.official:
            out["official"] = self.official
        if self.notes:
            out["notes"] = list(self.notes)
        return out

