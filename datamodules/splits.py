"""Seeded split protocols over (path, label) samples: stratified splits, exact k-shot draws, long-tailed
subsamples, and the OOD scenario's known-class subset."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import DatasetError

def stratified_split(labels: Sequence[int], ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices per class: ``round(ratio * n_c)`` of each class go to the second part."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    first, second = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(ratio * len(idx)))
        second += idx[:n].tolist()
        first += idx[n:].tolist()
    return sorted(first), sorted(second)


def sample_shots(labels: Sequence[int], k: int, seed: int, class_names: Sequence[str] | None = None,
                 n_val: int = 0) -> tuple[list[int], list[int]]:
    """Exactly ``k`` training indices per class (+ ``n_val`` validation indices), same seed -> same picks."""
    if k < 1:
        raise ValueError(f"shots must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    shots, val = [], []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k + n_val:
            name = class_names[c] if class_names else str(c)
            raise DatasetError(
                f"class '{name}' has {len(idx)} images, fewer than the {k} shots + {n_val} validation asked for"
            )
        idx = rng.permutation(idx)
        shots += idx[:k].tolist()
        val += idx[len(idx) - n_val:].tolist() if n_val else []
    return shots, val


def long_tail(labels: Sequence[int], imbalance: float, seed: int) -> list[int]:
    """Seeded long-tailed subsample (label-shift scenario): classes in a seeded order keep
    n_max * imbalance^(-rank / (C - 1)) images, so the rarest keeps 1/imbalance of the most frequent."""
    if imbalance < 1:
        raise ValueError(f"imbalance must be >= 1, got {imbalance}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    order = rng.permutation(classes)
    n_max = max(int((labels == c).sum()) for c in classes)
    keep = []
    for rank, c in enumerate(order):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = max(1, int(round(n_max * imbalance ** (-rank / max(1, len(classes) - 1)))))
        keep += idx[: min(n, len(idx))].tolist()
    return sorted(keep)


def known_classes(num_classes: int, num_known: int, seed: int = 2020) -> list[int]:
    """The OOD/partial scenario's known classes: the first ``num_known`` of a permutation drawn with
    NumPy ``RandomState(seed)`` (the paper's protocol, seed 2020)."""
    if not 0 < num_known <= num_classes:
        raise ValueError(f"num_known must be in 1..{num_classes}, got {num_known}")
    return sorted(np.random.RandomState(seed).permutation(num_classes)[:num_known].tolist())
