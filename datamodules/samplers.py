"""Evaluation under DDP without padding: Lightning's default DistributedSampler repeats samples to even out the
ranks, which biases accuracies of small test sets. Here rank r takes samples r, r + W, r + 2W, ... exactly once."""

from __future__ import annotations

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ShardSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A sequential loader; sharded without repeats when a process group is running (kept by Lightning)."""
    sampler = None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sampler = ShardSampler(dataset, dist.get_world_size(), dist.get_rank())
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      persistent_workers=num_workers > 0)
