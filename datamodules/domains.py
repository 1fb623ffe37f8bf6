"""Multi-domain image classification (Office-31, Office-Home, PACS, DomainNet, VisDA-2017, your own).

Two on-disk conventions are read, per domain:
- ImageFolder: ``root/<domain>/<class>/<image>`` (also ``root/<domain>/images/<class>/`` as Office-31 ships);
- list files: ``root/image_list/<domain>.txt`` with ``relative/path.jpg <label>`` lines (TLlib / Dassl /
  SHOT); the label is the last token, so paths may contain spaces.
Nothing is downloaded: a missing root raises an error naming the layout and where to get the data
(see ``datamodules/README.md``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchvision.transforms import v2 as T

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
README = "datamodules/README.md"


class DatasetError(RuntimeError):
    """A dataset on disk is missing or malformed; the message names the file and the problem."""


def read_json(path: str | Path, what: str = "file"):
    """Parsed JSON; a missing or malformed file is a DatasetError naming it (``what``: annotation file, ...)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} does not exist") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


@dataclass(frozen=True)
class DomainSpec:
    name: str
    aliases: tuple[str, ...] = ()

    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class DatasetDescriptor:
    name: str
    domains: tuple[DomainSpec, ...]
    classes: tuple[str, ...] | None = None  # None: the sorted class folders of the first domain found
    list_files: dict[str, str] = field(default_factory=lambda: {"all": "image_list/{domain}.txt"})
    label_offset: int = 0  # PACS lists count from 1
    official_test_split: bool = False  # DomainNet ships train/test lists per domain
    source: str = ""

    def domain(self, name: str) -> DomainSpec:
        if not self.domains:  # custom datasets: any folder name is a domain
            return DomainSpec(name)
        key = _norm(name)
        for d in self.domains:
            if key in {_norm(s) for s in d.spellings()}:
                return d
        valid = ", ".join(f"{d.name} ({'/'.join(d.aliases)})" if d.aliases else d.name for d in self.domains)
        raise DatasetError(f"unknown domain '{name}' for dataset {self.name}; valid domains: {valid}")


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


OFFICE31_CLASSES = (
    "back_pack bike bike_helmet bookcase bottle calculator desk_chair desk_lamp desktop_computer file_cabinet "
    "headphones keyboard laptop_computer letter_tray mobile_phone monitor mouse mug paper_notebook pen phone "
    "printer projector punchers ring_binder ruler scissors speaker stapler tape_dispenser trash_can"
).split()
OFFICEHOME_CLASSES = (
    "Alarm_Clock Backpack Batteries Bed Bike Bottle Bucket Calculator Calendar Candles Chair Clipboards Computer "
    "Couch Curtains Desk_Lamp Drill Eraser Exit_Sign Fan File_Cabinet Flipflops Flowers Folder Fork Glasses Hammer "
    "Helmet Kettle Keyboard Knives Lamp_Shade Laptop Marker Monitor Mop Mouse Mug Notebook Oven Pan Paper_Clip Pen "
    "Pencil Postit_Notes Printer Push_Pin Radio Refrigerator Ruler Scissors Screwdriver Shelf Sink Sneakers Soda "
    "Speaker Spoon TV Table Telephone ToothBrush Toys Trash_Can Webcam"
).split()

OFFICEHOME_CPR = (DomainSpec("Clipart", ("Cl", "C")), DomainSpec("Product", ("Pr", "P")),
                  DomainSpec("Real_World", ("Real World", "RealWorld", "Rw", "R")))  # the RSUT benchmark drops Art
VISDA_DOMAINS = (DomainSpec("Synthetic", ("train", "T", "syn")), DomainSpec("Real", ("validation", "V", "val")))
VISDA_CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
                 "skateboard", "train", "truck")

DESCRIPTORS: dict[str, DatasetDescriptor] = {
    "office31": DatasetDescriptor(
        "office31",
        (DomainSpec("amazon", ("A",)), DomainSpec("dslr", ("D",)), DomainSpec("webcam", ("W",))),
        tuple(OFFICE31_CLASSES),
        source="Office-31 (Saenko et al. 2010); TLlib's copy adds image_list/{amazon,dslr,webcam}.txt",
    ),
    "office_home": DatasetDescriptor(
        "office_home",
        (
            DomainSpec("Art", ("Ar", "A")),
            *OFFICEHOME_CPR,
        ),
        tuple(OFFICEHOME_CLASSES),
        source="Office-Home (Venkateswara et al. 2017), OfficeHomeDataset_10072016",
    ),
    "pacs": DatasetDescriptor(
        "pacs",
        (
            DomainSpec("art_painting", ("art", "A")),
            DomainSpec("cartoon", ("C",)),
            DomainSpec("photo", ("P",)),
            DomainSpec("sketch", ("S",)),
        ),
        ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
        list_files={"all": "image_list/{domain}_all.txt"},
        label_offset=1,
        source="PACS (Li et al. 2017), the kfold/ images folder",
    ),
    "domainnet": DatasetDescriptor(
        "domainnet",
        tuple(DomainSpec(d, (d[0],)) for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")),
        None,
        list_files={"train": "image_list/{domain}_train.txt", "test": "image_list/{domain}_test.txt"},
        official_test_split=True,
        source="DomainNet (Peng et al. 2019), cleaned version with {domain}_train.txt / {domain}_test.txt",
    ),
    "visda2017": DatasetDescriptor(
        "visda2017",
        VISDA_DOMAINS,
        VISDA_CLASSES,
        source="VisDA-2017 classification track (train/ and validation/ folders)",
    ),
    "vlcs": DatasetDescriptor(
        "vlcs",
        (DomainSpec("Caltech101", ("C",)), DomainSpec("LabelMe", ("L",)), DomainSpec("SUN09", ("S",)),
         DomainSpec("VOC2007", ("V",))),
        ("bird", "car", "chair", "dog", "person"),
        source="VLCS (Fang et al. 2013), DomainBed layout VLCS/<domain>/<class>/",
    ),
    "terra_incognita": DatasetDescriptor(
        "terra_incognita",
        tuple(DomainSpec(f"location_{n}", (f"L{n}",)) for n in (100, 38, 43, 46)),
        None,  # the class folders of the DomainBed copy
        source="Terra Incognita (Beery et al. 2018), DomainBed layout terra_incognita/location_<n>/<class>/",
    ),
    "office_home_rsut": DatasetDescriptor(
        "office_home_rsut",
        OFFICEHOME_CPR,
        tuple(OFFICEHOME_CLASSES),
        list_files={"all": "{domain}_RS.txt"},  # reversely-unbalanced source lists; targets read {domain}_UT.txt
        source="Office-Home RSUT lists (Tan et al., 'Class-imbalanced domain adaptation') over Office-Home images",
    ),
    "visda2017_rsut": DatasetDescriptor(
        "visda2017_rsut",
        VISDA_DOMAINS,
        VISDA_CLASSES,
        list_files={"all": "{domain}_RS.txt"},
        source="VisDA-C RSUT lists (Tan et al.) over the VisDA-2017 images",
    ),
    "custom": DatasetDescriptor("custom", (), None, source="your own ImageFolder or list files"),
}


# ---------------------------------------------------------------------------------------------- readers
def read_list_file(path: str | Path, root: str | Path, label_offset: int = 0,
                   num_classes: int | None = None) -> list[tuple[Path, int]]:
    """Parse ``relative/path.jpg <label>`` lines; a bad line raises naming the file and line number."""
    path, root = Path(path), Path(root)
    samples = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise DatasetError(f"{path}:{lineno}: expected '<image path> <integer label>', got {line!r}")
        label = int(parts[1]) - label_offset
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise DatasetError(
                f"{path}:{lineno}: label {parts[1]} is outside 0..{(num_classes or 1) - 1} "
                f"(label offset {label_offset})"
            )
        samples.append((root / parts[0].strip(), label))
    if not samples:
        raise DatasetError(f"{path}: list file has no samples")
    return samples


def scan_image_folder(folder: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index:
            raise DatasetError(f"{sub}: class folder '{sub.name}' is not in the dataset's class list")
        for f in sorted(sub.rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append((f, index[sub.name]))
    if not samples:
        raise DatasetError(f"{folder}: no images found (expected {folder}/<class>/<image>)")
    return samples


class ImageDataset(Dataset):
    """(image, label, domain index) from a list of files; an unreadable image names its file."""

    def __init__(self, samples: Sequence[tuple[Path, int]], domain: int, transform=None):
        self.samples = list(samples)
        self.domain = domain
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"{path}: image listed in the dataset does not exist") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DatasetError(f"{path}: not a readable image ({e})") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, label, self.domain


# ------------------------------------------------------------------------------------- splits & shots
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


class DomainDataModule(KnownClassesMixin, L.LightningDataModule):
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
        self._classes = tuple(classes) if classes else self.desc.classes
        self.num_known, self.known_seed = num_known, known_seed
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

    def _domain_dir(self, spec: DomainSpec) -> Path | None:
        for s in spec.spellings():
            d = self.root / s
            if d.is_dir():
                return d / "images" if (d / "images").is_dir() else d
        return None

    def _list_file(self, spec: DomainSpec, split: str) -> Path | None:
        pattern = self.desc.list_files.get(split)
        if pattern is None:
            return None
        for s in spec.spellings():
            f = self.root / pattern.format(domain=s)
            if f.is_file():
                return f
        return None

    @property
    def all_classes(self) -> tuple[str, ...]:
        if self._classes is None:
            for name in self.sources + self.targets:
                d = self._domain_dir(self.desc.domain(name))
                if d is not None:
                    self._classes = tuple(sorted(p.name for p in d.iterdir() if p.is_dir()))
                    break
            else:
                raise DatasetError(f"{self.root}: cannot infer the class list (no domain folder); pass classes=")
        return self._classes

    def _known_only(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        if not self.num_known:
            return samples
        relabel = {c: i for i, c in enumerate(self.known)}
        return [(p, relabel[y]) for p, y in samples if y in relabel]

    def read_domain(self, name: str, split: str = "all") -> list[tuple[Path, int]]:
        """Samples of one domain (``split`` is ``all``, or ``train``/``test`` where lists are official)."""
        self._check_root()
        spec = self.desc.domain(name)
        list_split = split if self.desc.official_test_split else "all"
        if self.layout in ("auto", "list"):
            f = self._list_file(spec, list_split)
            if f is not None:
                return read_list_file(f, self.root, self.desc.label_offset, len(self.all_classes))
            if self.layout == "list":
                raise DatasetError(f"{self.root}: no list file for domain '{spec.name}' "
                                   f"(expected {self.desc.list_files[list_split].format(domain=spec.name)})")
        d = self._domain_dir(spec)
        if d is None:
            raise DatasetError(
                f"{self.root}: domain '{spec.name}' not found (looked for folders {list(spec.spellings())} "
                f"and list files); see {README}"
            )
        return scan_image_folder(d, self.all_classes)

    # -- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        train_tf = build_transforms(self.image_size, self.mean, self.std, train=self.augment)
        eval_tf = build_transforms(self.image_size, self.mean, self.std, train=False)
        self.source_train, self.source_val = [], []
        for i, name in enumerate(self.sources):
            split = "train" if self.desc.official_test_split else "all"
            samples = self._known_only(self.read_domain(name, split))
            tr, va = stratified_split([s[1] for s in samples], self.val_ratio, self.split_seed)
            self.source_train.append(ImageDataset([samples[j] for j in tr], i, train_tf))
            self.source_val.append(ImageDataset([samples[j] for j in va], i, eval_tf))
        self.target_test = {}
        for j, name in enumerate(self.targets):
            split = "test" if self.desc.official_test_split else "all"
            self.target_test[name] = ImageDataset(self._known_only(self.read_domain(name, split)),
                                                 len(self.sources) + j, eval_tf)
        self.eval_transform = eval_tf
        self._ready = True

    def _loader(self, ds, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        if not self.sources:
            raise DatasetError("no source domains configured: nothing to train on")
        return self._loader(ConcatDataset(self.source_train), True, self.batch_size)

    def val_dataloader(self):
        loaders = [self._loader(ConcatDataset(self.source_val), False, self.eval_batch_size)]
        if self.val_on_targets:
            loaders += [self._loader(ds, False, self.eval_batch_size) for ds in self.target_test.values()]
        return loaders if len(loaders) > 1 else loaders[0]

    def test_dataloader(self):
        return [self._loader(ds, False, self.eval_batch_size) for ds in self.target_test.values()]

    @property
    def test_names(self) -> list[str]:
        return list(self.targets)
