"""Multi-domain image classification (Office-31, Office-Home, PACS, DomainNet, VisDA-2017, your own).

Per domain, the first layout found is read:
- list files of the dataset's own distributions (``catalogue.py``: TLlib ``image_list/``, the official
  DomainNet / PACS / VisDA lists, Dassl ``splits/``), with their official train / val / test splits;
- an ImageFolder ``root/<domain>/<class>/<image>`` (also ``<domain>/images/``, ``kfold/<domain>``,
  ``images/<domain>``).
Class names come from the list files where labels do (the class folder of each listed path), else from the
dataset's documented order, else from the sorted class folders; the summary says which. Nothing is
downloaded: a missing root raises an error naming the layout and where to get the data (``datamodules/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader
from torchvision.transforms import v2 as T

from .catalogue import DESCRIPTORS, DatasetDescriptor, DomainSpec, ListLayout  # noqa: F401 (re-exported)
from .errors import DatasetError, check_files_exist, read_json  # noqa: F401 (re-exported)
from .imagelists import (IMAGE_EXTENSIONS, ImageDataset, ListEntry, class_names_of,  # noqa: F401
                         parse_list_file, read_list_file, scan_image_folder)
from .splits import known_classes, long_tail, sample_shots, stratified_split  # noqa: F401 (re-exported)
from .samplers import SeededTrainData, eval_loader
from .summary import DataSummary

README = "datamodules/README.md"
IMAGE_DIRS = ("{domain}", "{domain}/images", "kfold/{domain}", "images/{domain}")


@dataclass
class DomainFiles:
    """Where one domain's samples come from: list files per split, or an ImageFolder."""

    layout: str
    lists: dict[str, Path] = field(default_factory=dict)
    image_root: Path | None = None
    folder: Path | None = None


# --------------------------------------------------------------------------------------- data module
def build_transforms(image_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                     resize_ratio: float = 1.143):
    normalize = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]
    if train:
        return T.Compose([T.RandomResizedCrop(image_size, scale=(0.7, 1.0), antialias=True),
                          T.RandomHorizontalFlip(), *normalize])
    return T.Compose([T.Resize(int(round(image_size * resize_ratio)), antialias=True),
                      T.CenterCrop(image_size), *normalize])


class KnownClassesMixin:
    """The label space of a module with ``all_classes``, ``num_known`` and ``known_seed``: every class, or the
    ``num_known`` subset of the OOD/partial scenario (``known_classes``), relabelled 0..K-1 in that order."""

    num_known: int | None
    known_seed: int

    @property
    def known(self) -> list[int]:
        n = len(self.all_classes)
        return known_classes(n, self.num_known, self.known_seed) if self.num_known else list(range(n))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.all_classes[c] for c in self.known)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DomainDataModule(KnownClassesMixin, SeededTrainData, L.LightningDataModule):
    """Sources -> train/val (seeded stratified split); each target domain -> one test loader.

    ``val_on_targets`` adds the target test loaders to validation: only the ``oracle`` selection
    protocol turns it on, and result rows record that protocol.
    """

    def __init__(
        self,
        root: str,
        dataset: str = "custom",
        sources: Sequence[str] = (),
        targets: Sequence[str] = (),
        layout: str = "auto",
        val_ratio: float = 0.1,
        split_seed: int = 0,
        image_size: int = 224,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        augment: bool = True,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_on_targets: bool = False,
        classes: Sequence[str] | None = None,
        num_known: int | None = None,
        known_seed: int = 2020,
    ):
        super().__init__()
        if dataset not in DESCRIPTORS:
            raise DatasetError(f"unknown dataset '{dataset}'; known: {', '.join(DESCRIPTORS)}")
        if layout not in ("auto", "imagefolder", "list"):
            raise ValueError(f"layout must be auto, imagefolder or list, got '{layout}'")
        self.root = Path(root)
        self.desc = DESCRIPTORS[dataset]
        if isinstance(sources, str) or isinstance(targets, str):
            raise TypeError("sources and targets are lists of domain names")
        self.sources = [self.desc.domain(d).name for d in sources]
        self.targets = [self.desc.domain(d).name for d in targets]
        if not self.sources and not self.targets:
            raise ValueError("give at least one source or target domain")
        self.layout = layout
        self.val_ratio, self.split_seed = val_ratio, split_seed
        self.image_size, self.mean, self.std, self.augment = image_size, tuple(mean), tuple(std), augment
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_on_targets = val_on_targets
        self._explicit_classes = tuple(classes) if classes else None
        self._classes: tuple[str, ...] | None = None
        self.num_known, self.known_seed = num_known, known_seed
        self._files: dict[str, DomainFiles] = {}
        self._parsed: dict[Path, list] = {}  # list file -> entries, ImageFolder -> samples: each read once
        self.summary = DataSummary()
        self._ready = False

    # -- discovery
    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset root {self.root} does not exist. Expected {self.root}/<domain>/<class>/<image> "
                f"(ImageFolder) or {self.root}/image_list/<domain>.txt list files for {self.desc.name}"
                f"{' — ' + self.desc.source if self.desc.source else ''}. Nothing is downloaded; "
                f"see {README} for where to get the data."
            )

    def _domain_dir(self, spec: DomainSpec) -> tuple[Path, str] | tuple[None, None]:
        for pattern in IMAGE_DIRS:
            for s in spec.spellings():
                d = self.root / pattern.format(domain=s)
                if d.is_dir() and (pattern != "{domain}" or not (d / "images").is_dir()):
                    return d, pattern
        return None, None

    def _find_lists(self, spec: DomainSpec) -> DomainFiles | None:
        """The first list layout of the dataset with a file for this domain (spellings tried in order)."""
        for lay in self.desc.list_layouts:
            for s in spec.spellings():
                lists = {split: self.root / pat.format(domain=s) for split, pat in lay.files.items()}
                lists = {split: f for split, f in lists.items() if f.is_file()}
                if lists:
                    return DomainFiles(lay.name, lists, image_root=self.root / lay.image_root.format(domain=s))
        return None

    def files(self, name: str) -> DomainFiles:
        """How domain ``name`` is laid out on disk (cached); a protocol with official lists never falls back
        to whole folders unless ``layout=imagefolder`` says so."""
        spec = self.desc.domain(name)
        if spec.name in self._files:
            return self._files[spec.name]
        self._check_root()
        found = self._find_lists(spec) if self.layout in ("auto", "list") else None
        if found is None:
            expected = [lay.files[next(iter(lay.files))].format(domain=spec.name) for lay in self.desc.list_layouts]
            if self.layout == "list" or (self.layout == "auto" and self.desc.official_split):
                why = (f"{self.desc.name}'s protocol has official split lists; pass layout=imagefolder to use whole "
                       f"folders instead (not the official protocol)" if self.layout == "auto" else "layout=list")
                raise DatasetError(f"{self.root}: no list file for domain '{spec.name}' (looked for "
                                   f"{', '.join(expected)}; {why}); see {README}")
            d, pattern = self._domain_dir(spec)
            if d is None:
                raise DatasetError(f"{self.root}: domain '{spec.name}' not found (looked for folders "
                                   f"{[p.format(domain=s) for p in IMAGE_DIRS[:2] for s in spec.spellings()]} and list "
                                   f"files {expected}); see {README}")
            found = DomainFiles(f"ImageFolder {pattern.replace('{domain}', '<domain>')}/<class>/<image>", folder=d)
            if self.desc.official_split:
                self.summary.note(f"{spec.name}: whole ImageFolder read (layout=imagefolder): not the official "
                                  f"{self.desc.name} split")
        self._files[spec.name] = found
        return found

    def _entries(self, name: str) -> dict[str, list[ListEntry]]:
        """Parsed list files of a domain, per split (cached; one read per file)."""
        f = self.files(name)
        out = {}
        for split, path in f.lists.items():
            if path not in self._parsed:
                self._parsed[path] = parse_list_file(path, f.image_root, self.desc.label_offset)
            out[split] = self._parsed[path]
        return out

    def _scan(self, folder: Path) -> list[tuple[Path, int]]:
        """An ImageFolder's samples, walked once (setup and the summary's count share it)."""
        if folder not in self._parsed:
            self._parsed[folder] = scan_image_folder(folder, self.all_classes)
        return self._parsed[folder]

    @property
    def all_classes(self) -> tuple[str, ...]:
        if self._classes is None:
            self._classes, self._class_source = self._infer_classes()
            self.summary.classes = list(self._classes)
        return self._classes

    def _infer_classes(self) -> tuple[tuple[str, ...], str]:
        names = self.domains_read()
        lists = {p: e for n in names for p, e in zip(self.files(n).lists.values(), self._entries(n).values())}
        if self._explicit_classes is not None:
            listed = class_names_of(lists)
            for label, folder in listed.items():
                if label >= len(self._explicit_classes) or self._explicit_classes[label] != folder:
                    given = self._explicit_classes[label] if label < len(self._explicit_classes) else "nothing"
                    raise DatasetError(f"{self.root}: the list files give label {label} to class folder '{folder}', "
                                       f"but classes= names it '{given}'")
            return tuple(self._explicit_classes), "classes=" + (" (checked against the list files)" if lists else "")
        if lists:
            listed = class_names_of(lists)
            n = max(len(self.desc.classes or ()), max(listed) + 1)
            if len(listed) == n:
                return tuple(listed[i] for i in range(n)), "list files (class folder of each listed path)"
            for order in self.desc.list_orders:  # a documented order that agrees with every listed label
                if len(order) == n and all(order[i] == f for i, f in listed.items()):
                    self.summary.note(f"{n - len(listed)} labels appear in no list file read; their names come from "
                                      f"the dataset's documented list order (consistent with the {len(listed)} listed)")
                    return tuple(order), "list files + documented list order"
            self.summary.note(f"{n - len(listed)} labels appear in no list file read and no documented order fits; "
                              f"they are named unlisted_<label>")
            return tuple(listed.get(i, f"unlisted_{i}") for i in range(n)), "list files (some labels unnamed)"
        if self.desc.classes:
            return tuple(self.desc.classes), f"the documented {self.desc.name} class order"
        for name in names:
            d = self.files(name).folder
            if d is not None:
                return tuple(sorted(p.name for p in d.iterdir() if p.is_dir())), f"sorted class folders of {d.name}"
        raise DatasetError(f"{self.root}: cannot infer the class list (no domain folder); pass classes=")

    def domains_read(self) -> list[str]:
        return self.sources + self.targets

    def read_domain(self, name: str, split: str = "all") -> list[tuple[Path, int]]:
        """Samples of one domain: ``split`` = ``all`` (the whole domain), or ``train``/``val``/``test`` of its
        official lists. Every file is checked to exist; the OOD subset (``num_known``) is applied."""
        f = self.files(name)
        n = len(self.all_classes)
        if f.folder is not None:
            if split != "all":
                raise DatasetError(f"{f.folder}: an ImageFolder has no official '{split}' split")
            samples, where = list(self._scan(f.folder)), f.folder
        else:
            entries = self._entries(name)
            if split == "all":
                seen, picked = set(), []
                for e in (e for es in entries.values() for e in es):
                    if e.path not in seen:
                        seen.add(e.path)
                        picked.append(e)
            elif split in entries:
                picked = entries[split]
            else:
                raise DatasetError(f"{self.root}: domain '{name}' has no '{split}' list ({f.layout})")
            bad = [e for e in picked if e.label >= n]
            if bad:
                raise DatasetError(f"{f.lists[split] if split in f.lists else self.root}:{bad[0].line}: label "
                                   f"{bad[0].label + self.desc.label_offset} is outside 0..{n - 1} (label offset "
                                   f"{self.desc.label_offset})")
            known_bad = {str(f.image_root / k) for k in self.desc.known_bad}
            kept = [e for e in picked if str(e.path) not in known_bad]
            self.summary.drop("known corrupt file of the release", len(picked) - len(kept), where=name)
            samples, where = [(e.path, e.label) for e in kept], f.lists.get(split, f.layout)
            check_files_exist([p for p, _ in samples], "image", where)
        if not samples:
            raise DatasetError(f"{where}: domain '{name}' split '{split}' has no samples")
        return self._known_only(samples, name)

    def read_list(self, path: str | Path) -> list[tuple[Path, int]]:
        """Another list file over this dataset's images (e.g. an RSUT ``<domain>_UT.txt``), checked against
        the class names: a label whose listed class folder is another class is an error naming file:line."""
        path, names = Path(path), self.all_classes
        entries = parse_list_file(path, self.root, self.desc.label_offset)
        for e in entries:
            if e.label >= len(names) or names[e.label] != e.folder:
                have = names[e.label] if e.label < len(names) else f"no class (0..{len(names) - 1})"
                raise DatasetError(f"{path}:{e.line}: label {e.label + self.desc.label_offset} is class folder "
                                   f"'{e.folder}' here, but {have} for this dataset")
        check_files_exist([e.path for e in entries], "image", path)
        return [(e.path, e.label) for e in entries]

    def _known_only(self, samples: list[tuple[Path, int]], name: str = "") -> list[tuple[Path, int]]:
        if not self.num_known:
            return samples
        relabel = {c: i for i, c in enumerate(self.known)}
        kept = [(p, relabel[y]) for p, y in samples if y in relabel]
        self.summary.drop(f"classes outside the {self.num_known} known (num_known)", len(samples) - len(kept), name)
        return kept

    def _source_splits(self, name: str) -> tuple[list, list]:
        """Official train/val lists when the layout has both; else the train list (or the whole domain) split
        per class by ``val_ratio``. An empty validation split is an error, not a crash after training."""
        splits = self.files(name).lists
        if "train" in splits and "val" in splits:
            return self.read_domain(name, "train"), self.read_domain(name, "val")
        samples = self.read_domain(name, "train" if "train" in splits else "all")
        tr, va = stratified_split([y for _, y in samples], self.val_ratio, self.split_seed)
        if not va and self.val_ratio > 0:
            per_class = min(sum(1 for _, y in samples if y == c) for c in {y for _, y in samples})
            raise DatasetError(f"source domain '{name}' ({self.files(name).layout}) has {len(samples)} images, as few "
                               f"as {per_class} per class: val_ratio={self.val_ratio} rounds to no validation image. "
                               f"Raise data.val_ratio, or use selection=last (no validation)")
        return [samples[j] for j in tr], [samples[j] for j in va]

    def _target_split(self, name: str) -> list:
        """The official test list where the layout has one, else the whole domain."""
        return self.read_domain(name, "test" if "test" in self.files(name).lists else "all")

    # -- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        train_tf = build_transforms(self.image_size, self.mean, self.std, train=self.augment)
        eval_tf = build_transforms(self.image_size, self.mean, self.std, train=False)
        self.source_train, self.source_val = [], []
        for i, name in enumerate(self.sources):
            tr, va = self._source_splits(name)
            self.source_train.append(ImageDataset(tr, i, train_tf))
            self.source_val.append(ImageDataset(va, i, eval_tf))
            self.summary.count("train", name, len(tr))
            self.summary.count("val", name, len(va))
        self.target_test = {}
        for j, name in enumerate(self.targets):
            samples = self._target_split(name)
            self.target_test[name] = ImageDataset(samples, len(self.sources) + j, eval_tf)
            self.summary.count("test", name, len(samples))
        self._summarize_layout()
        self.eval_transform = eval_tf
        self._ready = True

    def _summarize_layout(self) -> None:
        s = self.summary
        layouts = {n: self.files(n).layout for n in self.domains_read()}
        s.layout = next(iter(layouts.values())) if len(set(layouts.values())) == 1 else \
            "; ".join(f"{n}: {lay}" for n, lay in layouts.items())
        s.classes = list(self.classes)
        for name in self.domains_read():
            if name in self.desc.counts:
                s.expect(name, self.desc.counts[name], self._domain_size(name))

    def _domain_size(self, name: str) -> int:
        """Files of the whole domain as distributed (before any filtering), to compare with the release."""
        f = self.files(name)
        if f.folder is not None:
            return len(self._scan(f.folder))
        return len({e.path for es in self._entries(name).values() for e in es})

    def data_summary(self) -> dict:
        return {"dataset": self.desc.name, "class_source": getattr(self, "_class_source", None),
                **self.summary.as_dict()}

    def train_dataloader(self) -> DataLoader:
        if not self.sources:
            raise DatasetError("no source domains configured: nothing to train on")
        return self.seeded_loader(ConcatDataset(self.source_train), self.batch_size, self.num_workers)

    def val_dataloader(self):
        loaders = [eval_loader(ConcatDataset(self.source_val), self.eval_batch_size, self.num_workers)]
        if self.val_on_targets:
            loaders += [eval_loader(ds, self.eval_batch_size, self.num_workers) for ds in self.target_test.values()]
        return loaders if len(loaders) > 1 else loaders[0]

    def test_dataloader(self):
        return [eval_loader(ds, self.eval_batch_size, self.num_workers) for ds in self.target_test.values()]

    @property
    def test_names(self) -> list[str]:
        return list(self.targets)
