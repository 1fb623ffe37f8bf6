"""What a prediction reads: files, a folder of them, or a datalist; one item per case or file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from datamodules.errors import DatasetError, read_json

NIFTI = (".nii", ".nii.gz")
AUDIO = (".flac", ".wav", ".ogg", ".mp3", ".aiff", ".aif")
IMAGES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Item:
    name: str               # case id or file stem: names the outputs
    path: Path
    patient_id: str | None = None
    source_files: list[str] | None = None  # the DICOM slices it was imported from, in slice order


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def stem(path: Path) -> str:
    name = path.name
    for s in sorted(NIFTI, key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _datalist(path: Path) -> list[Item]:
    doc = read_json(path, "datalist")
    entries = [e for key in ("training", "validation", "test") for e in (doc.get(key) or [])]
    if not entries:
        raise DatasetError(f"{path}: no cases under training, validation or test (Decathlon datalist)")
    items = []
    for i, e in enumerate(entries):
        image = e.get("image") if isinstance(e, dict) else e
        if not isinstance(image, str):
            raise DatasetError(f"{path}: entry {i} has no 'image' path")
        p = (path.parent / image).resolve()
        entry = e if isinstance(e, dict) else {}
        items.append(Item(entry.get("case_id", stem(p)), p, entry.get("patient_id"), entry.get("source_files")))
    return items


def discover(inputs: list[Path], suffixes: tuple[str, ...], what: str) -> list[Item]:
    """Items from files with ``suffixes``, folders of them (any depth) and ``.json`` datalists; each name once."""
    items: list[Item] = []
    for src in inputs:
        if not src.exists():
            raise DatasetError(f"{src}: no such file or folder")
        if src.is_file() and src.suffix.lower() == ".json":
            items += _datalist(src)
        elif src.is_file():
            if not has_suffix(src, suffixes):
                raise DatasetError(f"{src}: not a {what} file ({', '.join(suffixes)})")
            items.append(Item(stem(src), src))
        else:
            found = sorted(p for p in src.rglob("*") if p.is_file() and has_suffix(p, suffixes))
            items += [Item(stem(p) if p.parent == src else _relname(src, p), p) for p in found]
    seen: dict[str, Path] = {}
    for it in items:
        it.name = re.sub(r"[^A-Za-z0-9._=-]+", "_", it.name)
        if it.name in seen:
            raise DatasetError(f"two inputs would write the same outputs '{it.name}': {seen[it.name]} and {it.path}")
        seen[it.name] = it.path
    return items


def _relname(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    return "__".join([*rel.parts[:-1], stem(path)])
