"""Samplers. Evaluation under DDP without padding (Lightning's default DistributedSampler repeats samples to even
out the ranks, which biases accuracies of small test sets; here rank r takes samples r, r + W, ... exactly once),
and training orders seeded per pass, so that a resumed run repeats the uninterrupted one exactly."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class ShardSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, loader=DataLoader, **kwargs) -> DataLoader:
    """A sequential loader; sharded without repeats when a process group is running (kept by Lightning). Every
    evaluation loader is one of these, so per-sample records gathered across processes count each sample once."""
    sampler = None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sampler = ShardSampler(dataset, dist.get_world_size(), dist.get_rank())
    return loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                  persistent_workers=num_workers > 0, **kwargs)


def seed_torch(seed: int) -> None:
    """``torch.manual_seed``, minus its cost where there is no accelerator: there each call still queues a lazy
    seeding for CUDA, XPU and MTIA with a formatted stack trace (about 1 ms; paid once per pass, thousands of times
    in a full-batch toy). Same CPU generator state either way; with an accelerator it is ``torch.manual_seed``."""
    if torch.accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


class EpochSeededSampler(Sampler[int]):
    """Training order whose randomness depends only on (seed, pass number), so a run resumed from a checkpoint
    continues bit-identically. Each pass also re-seeds this process's global RNGs (torch, NumPy, random) and the
    dataset's own (``dataset.reseed(seed)`` when it has one) from (seed, pass): the pass's augmentations and the
    model's random ops repeat whatever ran before (a sanity check, a resumed start). The pass counter is saved in
    checkpoints through :class:`SeededTrainData`."""

    def __init__(self, dataset: Dataset, seed: int = 0, replacement: bool = False, num_samples: int | None = None):
        self.dataset, self.seed, self.replacement = dataset, seed, replacement
        self.num_samples = num_samples or len(dataset)
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        s = epoch_seed(self.seed, self.epoch)
        self.epoch += 1
        seed_torch(s)
        np.random.seed(s % 2**32)
        random.seed(s)
        if hasattr(self.dataset, "reseed"):
            self.dataset.reseed(s)
        g = torch.Generator().manual_seed(s)
        n = len(self.dataset)
        idx = torch.randint(n, (self.num_samples,), generator=g) if self.replacement else torch.randperm(n, generator=g)
        return iter(idx.tolist())

    def worker_init(self, worker_id: int) -> None:
        """DataLoader workers: seeded from (seed, pass, worker), not from the main process's RNG history."""
        s = epoch_seed(self.seed, self.epoch * 1000 + worker_id + 1)
        seed_torch(s)
        np.random.seed(s % 2**32)
        random.seed(s)


class SeededTrainData:
    """LightningDataModule mixin: ``seeded_loader`` builds the training loader on an :class:`EpochSeededSampler`
    whose pass counter goes into checkpoints (``state_dict``) and comes back on resume. ``train_seed`` is the run's
    seed (set by the entry point)."""

    train_seed: int = 0

    def seeded_loader(self, dataset: Dataset, batch_size: int, num_workers: int = 0, replacement: bool = False,
                      num_samples: int | None = None, loader=DataLoader, seed: int | None = None,
                      **kwargs) -> DataLoader:
        sampler = EpochSeededSampler(dataset, self.train_seed if seed is None else seed, replacement, num_samples)
        sampler.epoch = getattr(self, "_resume_epoch", 0)
        self._train_sampler = sampler
        # persistent workers would keep the first pass's seeds: workers start afresh each pass instead
        return loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      worker_init_fn=sampler.worker_init if num_workers else None, **kwargs)

    def state_dict(self) -> dict:
        sampler = getattr(self, "_train_sampler", None)
        return {"train_sampler_epoch": sampler.epoch} if sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._resume_epoch = int(state.get("train_sampler_epoch", 0))
