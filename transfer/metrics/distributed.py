"""Evaluation across processes, one way for every method.

Every evaluation loader shards its set with :class:`datamodules.samplers.ShardSampler` (each sample on exactly one
process, no padding), so nothing is counted twice. torchmetrics metrics (accuracy, mAP, ...) sync their own states;
what is not a metric state (per-case clinical rows, per-trial scores, SND's probability rows, expert gate mass)
comes together through :func:`gather`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(items: list[Any]) -> list[Any]:
    """Every process's ``items``, concatenated in rank order (tensors are moved to the CPU); in one process, ``items``."""
    if world_size() == 1:
        return list(items)
    items = [t.detach().cpu() if isinstance(t, torch.Tensor) else t for t in items]
    parts: list[list[Any] | None] = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
