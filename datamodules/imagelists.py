"""Readers of image-classification data on disk: list files (``relative/path.jpg <label>``, TLlib / Dassl /
SHOT / the official DomainNet and PACS lists) and ImageFolder trees, and the dataset over their samples."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class ListEntry:
    path: Path
    label: int
    folder: str  # the class folder the path names (its parent), where the list's label gets its class name
    line: int


def parse_list_file(path: str | Path, root: str | Path, label_offset: int = 0) -> list[ListEntry]:
    """``<image path> <integer label>`` lines. A line with more columns is a path with spaces only when that file
    exists (e.g. ``Real World/...``); otherwise it is an error naming ``file:line``, as is a missing label."""
    path, root = Path(path), Path(root)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetError(f"{path}: list file does not exist") from None
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split()
        if len(cols) < 2 or not re.fullmatch(r"-?\d+", cols[-1]):
            raise DatasetError(f"{path}:{lineno}: expected '<image path> <integer label>', got {line!r}")
        rel = line.strip().rsplit(maxsplit=1)[0].strip().lstrip("/")
        if len(cols) > 2 and not (root / rel).exists():
            raise DatasetError(f"{path}:{lineno}: expected 2 columns '<image path> <integer label>', got "
                               f"{len(cols)} ({line!r}; a path with spaces is read only when that file exists)")
        label = int(cols[-1]) - label_offset
        if label < 0:
            raise DatasetError(f"{path}:{lineno}: label {cols[-1]} is negative after the list's label offset "
                               f"{label_offset}")
        entries.append(ListEntry(root / rel, label, Path(rel).parent.name, lineno))
    if not entries:
        raise DatasetError(f"{path}: list file has no samples")
    return entries


def read_list_file(path: str | Path, root: str | Path, label_offset: int = 0,
                   num_classes: int | None = None) -> list[tuple[Path, int]]:
    """(path, label) samples of a list file; labels must lie in ``0..num_classes-1`` when given."""
    entries = parse_list_file(path, root, label_offset)
    for e in entries:
        if num_classes is not None and e.label >= num_classes:
            raise DatasetError(f"{path}:{e.line}: label {e.label + label_offset} is outside 0..{num_classes - 1} "
                               f"(label offset {label_offset})")
    return [(e.path, e.label) for e in entries]


def class_names_of(lists: Mapping[Path, Sequence[ListEntry]]) -> dict[int, str]:
    """label -> class folder, from the lists themselves. One label naming two folders, or one folder under two
    labels, is an error naming both places: the list and the images disagree about what a class is."""
    by_label: dict[int, tuple[str, str]] = {}
    by_folder: dict[str, tuple[int, str]] = {}
    for path, entries in lists.items():
        for e in entries:
            where = f"{path}:{e.line}"
            if e.label in by_label and by_label[e.label][0] != e.folder:
                raise DatasetError(f"{where}: label {e.label} is class folder '{e.folder}', but "
                                   f"{by_label[e.label][1]} gives it folder '{by_label[e.label][0]}'")
            if e.folder in by_folder and by_folder[e.folder][0] != e.label:
                raise DatasetError(f"{where}: class folder '{e.folder}' has label {e.label}, but "
                                   f"{by_folder[e.folder][1]} gives it label {by_folder[e.folder][0]}")
            by_label.setdefault(e.label, (e.folder, where))
            by_folder.setdefault(e.folder, (e.label, where))
    return {label: folder for label, (folder, _) in by_label.items()}


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
