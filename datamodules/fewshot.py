"""One target domain under the few-shot SFDA protocol (Lee et al. 2023), with its realistic scenarios.

The protocol, seeded by ``shot_seed``: a stratified 80/20 split of the target domain (20 % = test for every
method), then ``shots`` training images + 1 validation image per class drawn from the 80 %. Source-free
methods instead adapt on the whole 80 % pool without labels. Scenarios:

- ``standard``: every class of the domain.
- ``label_shift``: the target is long-tailed — an RSUT list file (``label_shift_list``, e.g.
  ``{domain}_UT.txt``) or a seeded long-tail subsample (``imbalance``); report per-class mean accuracy.
- ``ood``: only ``num_known`` classes (a ``RandomState(known_seed)`` permutation, the paper's 2020) are
  labelled, tested and predicted; the unlabelled pool keeps the unknown-class images.

Source domains are never read: the wrapped domain data module is built with the target only.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from .domains import (DatasetError, DomainDataModule, ImageDataset, KnownClassesMixin, build_transforms, long_tail,
                      sample_shots, stratified_split)
from .samplers import SeededTrainData, epoch_seed, eval_loader

SCENARIOS = ("standard", "label_shift", "ood")
TRAIN_ON = ("shots", "unlabelled")


class Unlabelled(Dataset):
    """Images of the adaptation pool with the labels hidden: (image, -1, index into the pool)."""

    def __init__(self, images: ImageDataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i][0], -1, i


class FewShotTargetDataModule(KnownClassesMixin, SeededTrainData, L.LightningDataModule):
    """``domains``: a :class:`DomainDataModule` (or the synthetic one) that holds the target domain."""

    def __init__(
        self,
        domains: DomainDataModule,
        target: str,
        shots: int = 3,
        shot_seed: int = 0,
        test_ratio: float = 0.2,
        n_val: int = 1,
        scenario: str = "standard",
        imbalance: float = 20.0,
        label_shift_list: str | None = None,
        scenario_seed: int = 0,
        num_known: int | None = None,
        known_seed: int = 2020,
        train_on: str = "shots",
        steps: int = 1000,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        source: str | list[str] | None = None,
        dataset: str | None = None,
    ):
        super().__init__()
        self.source = source  # the source model's domain(s): recorded, never read
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got '{scenario}'")
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got '{train_on}'")
        if scenario == "ood" and not num_known:
            raise ValueError("scenario 'ood' needs num_known (how many classes are known to the source model)")
        if domains.num_known:
            raise ValueError("set num_known on the few-shot target module (scenario ood), not on the domain module: "
                             "the unlabelled pool must keep the unknown classes")
        if domains.sources:
            raise ValueError(f"source-free adaptation reads no source data, but the domain module lists sources "
                             f"{domains.sources}; build it with the target only")
        self.domains = domains
        self.target = domains.desc.domain(target).name
        self.shots, self.shot_seed, self.test_ratio, self.n_val = shots, shot_seed, test_ratio, n_val
        self.scenario, self.imbalance, self.label_shift_list = scenario, imbalance, label_shift_list
        self.scenario_seed, self.known_seed = scenario_seed, known_seed
        self.num_known = num_known if scenario == "ood" else None
        self.train_on, self.steps = train_on, steps
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self._ready = False

    # -- the label space the adapted model predicts
    @property
    def all_classes(self) -> tuple[str, ...]:
        return tuple(self.domains.all_classes)

    @property
    def test_names(self) -> list[str]:
        return [self.target]

    # -- the protocol
    def _target_samples(self) -> list[tuple[Path, int]]:
        if self.scenario == "label_shift" and self.label_shift_list:
            f = self.domains.root / self.label_shift_list.format(domain=self.target)
            if not f.is_file():
                raise DatasetError(f"{f}: label-shift list file for domain '{self.target}' does not exist")
            return self.domains.read_list(f)
        samples = self.domains.read_domain(self.target)
        if self.scenario == "label_shift":
            keep = long_tail([y for _, y in samples], self.imbalance, self.scenario_seed)
            samples = [samples[i] for i in keep]
        return samples

    def prepare_data(self) -> None:
        self.domains.prepare_data()  # generated datasets write themselves here; real ones do nothing

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self.prepare_data()
        d = self.domains
        train_tf = build_transforms(d.image_size, d.mean, d.std, train=d.augment)
        eval_tf = build_transforms(d.image_size, d.mean, d.std, train=False)
        samples = self._target_samples()
        labels = [y for _, y in samples]
        rest, test = stratified_split(labels, self.test_ratio, self.shot_seed)
        relabel = {c: i for i, c in enumerate(self.known)}
        known = lambda idx: [(samples[i][0], relabel[samples[i][1]]) for i in idx if samples[i][1] in relabel]  # noqa: E731
        labelled_rest = known(rest)
        shot_idx, val_idx = sample_shots([y for _, y in labelled_rest], self.shots, self.shot_seed, self.classes,
                                         self.n_val)
        domain = 0
        self.shot_set = ImageDataset([labelled_rest[i] for i in shot_idx], domain, train_tf)
        self.val_set = ImageDataset([labelled_rest[i] for i in val_idx], domain, eval_tf)
        self.test_set = ImageDataset(known(test), domain, eval_tf)
        pool = [samples[i] for i in rest]  # unknown classes included in the ood scenario
        self.pool_train = Unlabelled(ImageDataset(pool, domain, train_tf))
        self.pool_eval = Unlabelled(ImageDataset(pool, domain, eval_tf))
        s = self.summary
        s.layout = d.files(self.target).layout
        s.classes = list(self.classes)
        for split, n in (("shots", len(self.shot_set)), ("shot_val", len(self.val_set)), ("test", len(self.test_set)),
                         ("unlabelled_pool", len(pool))):
            s.count(split, self.target, n)
        if self.target in d.desc.counts and self.scenario != "label_shift":
            s.expect(self.target, d.desc.counts[self.target], d._domain_size(self.target))
        self._ready = True

    @property
    def summary(self):
        return self.domains.summary  # one record: what the wrapped module read, then the protocol's splits

    def data_summary(self) -> dict:
        return {**self.domains.data_summary(), "scenario": self.scenario, "shots": self.shots,
                "shot_seed": self.shot_seed}

    # -- loaders
    def _loader(self, ds, batch_size: int, shuffle: bool = False, sampler=None) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        seed = epoch_seed(self.train_seed, self.shot_seed)  # each shot draw gets its own batch order
        if self.train_on == "unlabelled":
            return self.seeded_loader(self.pool_train, self.batch_size, self.num_workers, seed=seed)
        # the paper draws batches with replacement from the k*C shots for a fixed number of steps
        return self.seeded_loader(self.shot_set, self.batch_size, self.num_workers, replacement=True,
                                  num_samples=self.steps * self.batch_size, seed=seed)

    def val_dataloader(self) -> DataLoader:
        """Labelled held-out shots for few-shot fine-tuning; the unlabelled pool (for SND) for SFDA."""
        if self.train_on == "unlabelled":
            return eval_loader(self.pool_eval, self.eval_batch_size, self.num_workers)
        return eval_loader(self.val_set, self.eval_batch_size, self.num_workers)

    def pool_dataloader(self) -> DataLoader:
        """The whole unlabelled adaptation pool in a fixed order, in every process (memory banks, pseudo-labels)."""
        return self._loader(self.pool_eval, self.eval_batch_size)

    def test_dataloader(self) -> list[DataLoader]:
        return [eval_loader(self.test_set, self.eval_batch_size, self.num_workers)]

