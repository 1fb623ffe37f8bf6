"""Frozen-encoder embeddings of a multi-domain dataset, cached on disk (LanDA and other CLIP-feature methods).

Each split is encoded once per (encoder identity, preprocessing, file list with sizes and mtimes) and stored as
safetensors under ``cache_dir/embeddings/``; a cache file written by another encoder is rebuilt, never reused.
Target domains are encoded only for testing: fitting and validation touch source images only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Protocol

import lightning as L
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from .domains import DatasetError, DomainDataModule, ImageDataset
from .samplers import SeededTrainData, eval_loader

log = logging.getLogger(__name__)


class ImageEncoder(Protocol):
    identity: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...


class Rows(TensorDataset):
    """Rows of tensors that a DataLoader reads a batch at a time (``__getitems__``: one indexing per tensor, not one
    call and one collate per row; LanDA trains full-batch on thousands of embeddings for hundreds of epochs). The
    batch is the same as the default collate's: a list of the tensors' rows at the indices. Load with
    ``collate_fn=Rows.collate``."""

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return [t[idx] for t in self.tensors]

    @staticmethod
    def collate(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        return batch

    @classmethod
    def cat(cls, parts: list[TensorDataset]) -> "Rows":
        """One set of rows from several, in order (what ``ConcatDataset`` would index)."""
        return cls(*(torch.cat(columns) for columns in zip(*(p.tensors for p in parts))))


class EmbeddingDataModule(SeededTrainData, L.LightningDataModule):
    """Batches of (embedding, label, domain index) for the sources; each target and each source's held-out split
    is a test set (``test_names``), so a run reports accuracy on the target and on the sources."""

    def __init__(self, domains: DomainDataModule, encoder: ImageEncoder, cache_dir: str, batch_size: int = 4096,
                 eval_batch_size: int = 4096, encode_batch_size: int = 128, dataset: str | None = None,
                 sources=None, targets=None):  # dataset/sources/targets: config conveniences, read from ``domains``
        super().__init__()
        self.domains, self.encoder = domains, encoder
        domains.image_size, domains.mean, domains.std, domains.augment = (
            encoder.image_size, tuple(encoder.mean), tuple(encoder.std), False)  # the encoder's preprocessing
        self.cache_dir = Path(cache_dir) / "embeddings"
        self.batch_size, self.eval_batch_size, self.encode_batch_size = batch_size, eval_batch_size, encode_batch_size
        self.encoded = 0  # images encoded by this module (cache misses), for tests and logs
        self._splits: dict[str, Rows] = {}

    @property
    def sources(self) -> list[str]:
        return self.domains.sources

    @property
    def targets(self) -> list[str]:
        return self.domains.targets

    @property
    def classes(self) -> tuple[str, ...]:
        return self.domains.classes

    @property
    def num_classes(self) -> int:
        return self.domains.num_classes

    @property
    def test_names(self) -> list[str]:
        return [*self.targets, *self.sources]

    # -- the cache
    def _key(self, ds: ImageDataset) -> str:
        files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) if Path(p).exists() else (str(p), -1, -1)
                 for p, _ in ds.samples]
        blob = json.dumps({"encoder": self.encoder.identity, "size": self.encoder.image_size,
                           "mean": list(self.encoder.mean), "std": list(self.encoder.std),
                           "files": files, "labels": ds.labels}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def embed(self, name: str, ds: ImageDataset) -> Rows:
        """Embeddings of ``ds`` from the cache, or encoded now and cached (atomically)."""
        path = self.cache_dir / f"{name}-{self._key(ds)}.safetensors"
        if path.exists():
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                if meta.get("encoder") == self.encoder.identity and int(meta.get("n", -1)) == len(ds):
                    z = f.get_tensor("z")
                    return Rows(z, torch.tensor(ds.labels), torch.full((len(ds),), ds.domain))
            log.warning("%s: cached by encoder %s, not %s; rebuilding", path, meta.get("encoder"), self.encoder.identity)
        if len(ds) == 0:
            raise DatasetError(f"split '{name}' has no images (too few per class for the split ratio?)")
        # its own generator: encoding on a cache miss must not move the run's global random stream
        loader = DataLoader(ds, batch_size=self.encode_batch_size, num_workers=self.domains.num_workers,
                            generator=torch.Generator().manual_seed(0))
        z = torch.cat([self.encoder.encode_images(x) for x, _, _ in loader]).float().contiguous()
        self.encoded += len(ds)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file({"z": z}, str(tmp), metadata={"encoder": self.encoder.identity, "n": str(len(ds))})
        tmp.replace(path)
        return Rows(z, torch.tensor(ds.labels), torch.full((len(ds),), ds.domain))

    # -- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        self.domains.setup(stage)
        for i, name in enumerate(self.sources):
            for split, parts in (("train", self.domains.source_train), ("val", self.domains.source_val)):
                if f"{name}/{split}" not in self._splits:
                    self._splits[f"{name}/{split}"] = self.embed(f"{name}-{split}", parts[i])
        if stage in (None, "test", "predict"):
            for name in self.targets:
                if f"{name}/test" not in self._splits:
                    self._splits[f"{name}/test"] = self.embed(f"{name}-test", self.domains.target_test[name])

    def data_summary(self) -> dict:
        return {**self.domains.data_summary(), "encoder": self.encoder.identity, "encoded_now": self.encoded}

    def split(self, name: str) -> Rows:
        return self._splits[name]

    def train_dataloader(self) -> DataLoader:
        ds = Rows.cat([self._splits[f"{s}/train"] for s in self.sources])
        return self.seeded_loader(ds, self.batch_size, collate_fn=Rows.collate)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(Rows.cat([self._splits[f"{s}/val"] for s in self.sources]), self.eval_batch_size,
                           collate_fn=Rows.collate)

    def test_dataloader(self) -> list[DataLoader]:
        sets = [self._splits[f"{t}/test"] for t in self.targets] + [self._splits[f"{s}/val"] for s in self.sources]
        return [eval_loader(ds, self.eval_batch_size, collate_fn=Rows.collate) for ds in sets]
