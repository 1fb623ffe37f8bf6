"""CT volumes + binary masks listed in a Decathlon-style datalist, with folds from a committed file.

Datalist: ``{"training": [{"image": "imagesTr/x.nii.gz", "label": "labelsTr/x.nii.gz", "case_id": "x",
"patient_id": "p1"}, ...]}`` (paths relative to the datalist's folder; ``case_id`` defaults to the image
stem, ``patient_id`` to ``case_id``). Folds come from a fold file written by ``python -m transfer.folds
make`` or, without one, from the datalist's own ``fold`` keys (never re-split here): fold ``i`` is the test
set, the other folds are the training set.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import lightning as L
import nibabel as nib
import numpy as np
import torch
from monai import transforms as T
from monai.data import CacheDataset, DataLoader

from .errors import DatasetError, read_json
from .files import atomic_path, atomic_write_text, sha256_file
from .samplers import SeededTrainData, eval_loader
from .summary import DataSummary


def load_datalist(path: str | Path, key: str = "training", summary: DataSummary | None = None) -> list[dict]:
    """Cases with absolute paths; a missing file or a case without image/label is an error naming it. Cases
    without ``patient_id`` count as their own patient: said in ``summary`` (folds are then per case)."""
    path = Path(path)
    data = read_json(path, "datalist")
    if key not in data:
        raise DatasetError(f"{path}: no '{key}' list (Decathlon datalist format)")
    cases, seen, no_patient = [], set(), 0
    for i, entry in enumerate(data[key]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(f"{path}: entry {i} needs 'image' and 'label'")
        case = dict(entry)
        for k in ("image", "label"):
            case[k] = str((path.parent / entry[k]).resolve())
            if not Path(case[k]).exists():
                raise DatasetError(f"{path}: entry {i} points at a missing {k} file {case[k]}")
        case.setdefault("case_id", Path(entry["image"]).name.split(".")[0])
        no_patient += "patient_id" not in case
        case.setdefault("patient_id", case["case_id"])
        if case["case_id"] in seen:
            raise DatasetError(f"{path}: case_id '{case['case_id']}' appears twice")
        seen.add(case["case_id"])
        cases.append(case)
    if no_patient:
        (summary or DataSummary()).note(
            f"{path}: {no_patient} of {len(cases)} cases have no 'patient_id', so each is its own patient and folds are "
            f"per case: two scans of one patient could land in training and test. Add \"patient_id\": \"<id>\" to "
            f"every entry of '{key}' and remake the folds")
    return cases


def check_pair(case: dict, atol: float = 1e-3) -> None:
    """Image and label must share shape and affine (headers only; nothing is decoded)."""
    try:
        img, lab = nib.load(case["image"]), nib.load(case["label"])
    except Exception as e:  # nibabel raises several types for corrupt headers
        raise DatasetError(f"case {case['case_id']}: cannot read NIfTI header of {case['image']} or {case['label']} "
                           f"({type(e).__name__}: {e})") from e
    if len(img.shape) != 3:
        raise DatasetError(f"case {case['case_id']}: image {case['image']} has shape {img.shape}, not one 3-D "
                           f"volume; the models take single-channel 3-D scans (split a 4-D file into its volumes)")
    if img.shape[:3] != lab.shape[:3]:
        raise DatasetError(f"case {case['case_id']}: image shape {img.shape} differs from label shape {lab.shape}")
    if not np.allclose(img.affine, lab.affine, atol=atol):
        raise DatasetError(f"case {case['case_id']}: image and label affines differ")


def read_folds(path: str | Path, cases: Sequence[dict] | None = None, datalist: str | Path | None = None,
               summary: DataSummary | None = None) -> dict[str, int]:
    """``{case_id: fold}`` from a fold file. With ``cases``: every case must be covered and no patient split
    across folds; with ``datalist``: the file must have been made from that datalist (same sha256)."""
    path = Path(path)
    data = read_json(path, "fold file (make one: python -m transfer.folds make ...)")
    if not isinstance(data, dict) or not isinstance(data.get("folds"), dict):
        raise DatasetError(f"{path}: not a fold file (expected a 'folds' mapping case_id -> fold)")
    folds = {k: int(v) for k, v in data["folds"].items()}
    if datalist is not None:
        want = data.get("datalist_sha256")
        have = sha256_file(datalist)
        if want is None:
            (summary or DataSummary()).note(f"{path}: no datalist checksum in the fold file; cannot verify it was made "
                                            f"from {datalist}")
        elif want != have:
            raise DatasetError(f"{path}: made from another datalist (sha256 {want[:12]}…, {datalist} is {have[:12]}…); "
                               f"remake it: python -m transfer.folds make datalist={datalist} ...")
    if cases is not None:
        missing = [c["case_id"] for c in cases if c["case_id"] not in folds]
        if missing:
            raise DatasetError(f"{path}: fold file does not cover {len(missing)} cases of the datalist "
                               f"(e.g. '{missing[0]}'); regenerate it or fix the datalist")
        check_patients_grouped(cases, folds, str(path))
    return folds


def check_patients_grouped(cases: Sequence[dict], folds: dict[str, int], where: str) -> None:
    """All scans of a patient in one fold: a patient in two folds leaks into its own test set."""
    seen: dict[str, tuple[int, str]] = {}
    for c in cases:
        fold, pid = folds[c["case_id"]], c["patient_id"]
        if pid in seen and seen[pid][0] != fold:
            raise DatasetError(f"{where}: patient '{pid}' is split across folds ({seen[pid][1]} in fold {seen[pid][0]}, "
                               f"{c['case_id']} in fold {fold}): its scans would be in training and test. Make "
                               f"per-patient folds: python -m transfer.folds make datalist=... (patient_id keys)")
        seen.setdefault(pid, (fold, c["case_id"]))


def lesion_volume_ml(label_path: str) -> float:
    img = nib.load(label_path)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return float((np.asarray(img.dataobj) > 0).sum()) * voxel_ml


def make_folds(cases: Sequence[dict], k: int, seed: int, stratify: str | None = None,
               bins: Sequence[float] = (0, 25, 50, 100, 225)) -> dict[str, int]:
    """``{case_id: fold}``, per patient: patients shuffled with ``seed`` and dealt round-robin — within
    lesion-volume bins (mL) when ``stratify='volume'``, so every fold sees small and large lesions."""
    patients: dict[str, list[dict]] = defaultdict(list)
    for c in cases:
        patients[c["patient_id"]].append(c)
    if len(patients) < k:
        raise ValueError(f"{len(patients)} patients cannot fill {k} folds")
    if stratify not in (None, "none", "volume"):
        raise ValueError(f"stratify must be volume or none, got '{stratify}'")
    rng = np.random.default_rng(seed)
    names = sorted(patients)
    groups: dict[int, list[str]] = defaultdict(list)
    for p in names:
        b = 0
        if stratify == "volume":
            vol = float(np.mean([lesion_volume_ml(c["label"]) for c in patients[p]]))
            b = int(np.searchsorted(np.asarray(bins[1:-1], float), vol, side="left"))
        groups[b].append(p)
    fold_of_patient, offset = {}, 0
    for b in sorted(groups):
        members = [groups[b][i] for i in rng.permutation(len(groups[b]))]
        for j, p in enumerate(members):
            fold_of_patient[p] = (offset + j) % k
        offset += len(members)  # continue the deal where the last bin stopped, to balance fold sizes
    return {c["case_id"]: fold_of_patient[p] for p in names for c in patients[p]}


def write_folds(path: str | Path, datalist: str | Path, folds: dict[str, int], k: int, seed: int,
                stratify: str | None, cases: Sequence[dict]) -> None:
    """The fold file: folds per case and per patient, how they were made, and the datalist's checksum."""
    doc = {"k": k, "seed": seed, "stratify": stratify or "none", "datalist": str(datalist),
           "datalist_sha256": sha256_file(datalist),
           "patients": {c["patient_id"]: folds[c["case_id"]] for c in cases}, "folds": folds}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def save_nifti(image: nib.Nifti1Image, path: str | Path) -> None:
    """``nibabel.save`` through a temporary file (same extension, so ``.nii.gz`` is compressed) and a rename."""
    suffix = "".join(Path(path).suffixes[-2:]) if str(path).endswith(".nii.gz") else Path(path).suffix
    with atomic_path(path, suffix) as tmp:
        nib.save(image, tmp)


class LoadCased(T.MapTransform):
    """MONAI's LoadImaged, whose errors name the case and the file and keep the reader's own error as cause."""

    def __init__(self, keys):
        super().__init__(keys)
        # NIfTI only: naming the reader keeps MONAI from building (and warning about) its DICOM/GPU readers
        self.load = T.LoadImaged(keys, reader="NibabelReader", image_only=True)

    def __call__(self, data):
        try:
            return self.load(data)
        except Exception as e:
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            files = ", ".join(str(data[k]) for k in self.key_iterator(data))
            raise DatasetError(f"case {data.get('case_id')}: cannot read its volumes ({files}): "
                               f"{type(root).__name__}: {root}") from root


class CheckBinaryLabeld(T.MapTransform):
    """Fail on label values other than {0, 1}, naming the case."""

    def __call__(self, data):
        d = dict(data)
        for k in self.key_iterator(d):
            values = torch.unique(torch.as_tensor(d[k]))
            if not set(values.tolist()) <= {0.0, 1.0}:
                raise DatasetError(f"case {d.get('case_id')}: label has values {values.tolist()[:6]}, expected {{0, 1}}")
        return d


def build_transforms(train: bool, window: tuple[float, float], spacing: Sequence[float] | None,
                     roi: Sequence[int] | None, flip: float, elastic: float, spatial_dims: int = 3,
                     labelled: bool = True):
    """Load, channel first, RAS, optional resampling to ``spacing``, HU window to [0, 1] (+ training crops and
    augmentation). ``labelled=False``: the image alone, as prediction reads new scans (invertible back to the
    scan's own grid with ``Compose.inverse``)."""
    keys = ["image", "label"] if labelled else ["image"]
    ts = [LoadCased(keys), T.EnsureChannelFirstd(keys)]
    if labelled:
        ts.append(CheckBinaryLabeld("label"))
    ts.append(T.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))  # RAS as nibabel means it
    if spacing:
        ts.append(T.Spacingd(keys, pixdim=tuple(spacing), mode=("bilinear", "nearest")[:len(keys)]))
    ts.append(T.ScaleIntensityRanged("image", a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True))
    if train and roi:
        ts += [T.SpatialPadd(keys, spatial_size=roi),
               T.RandSpatialCropd(keys, roi_size=roi, random_size=False)]
    if train and flip > 0:
        ts += [T.RandFlipd(keys, prob=flip, spatial_axis=0)]
    if train and elastic > 0:
        ts += [T.Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(50, 100), prob=elastic,
                                mode=("bilinear", "nearest"))]
    ts.append(T.EnsureTyped(keys, dtype=torch.float32))
    return T.Compose(ts)


def _datalist_folds(datalist: str, cases: Sequence[dict]) -> dict[str, int]:
    """Folds from the datalist's own ``fold`` keys (when no fold file is given)."""
    missing = [c["case_id"] for c in cases if "fold" not in c]
    if missing:
        raise DatasetError(f"{datalist}: case '{missing[0]}' has no 'fold' key and no fold file was given "
                           f"(python -m transfer.folds make ...)")
    folds = {c["case_id"]: int(c["fold"]) for c in cases}
    check_patients_grouped(cases, folds, f"{datalist} ('fold' keys)")
    return folds


def _named(error: BaseException) -> BaseException | None:
    """MONAI wraps transform errors in 'applying transform ...'; find ours, which name the case."""
    e: BaseException | None = error
    while e is not None:
        if isinstance(e, DatasetError):
            return e
        e = e.__cause__
    return None


class CaseDataset(CacheDataset):
    """A CacheDataset whose errors name the case (ours, with the reader's error as cause) instead of the transform."""

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except RuntimeError as e:
            ours = _named(e)
            if ours is None:
                raise
            raise ours  # noqa: B904 (its cause, the reader's error, is kept)

    def reseed(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed % 2**32)  # MONAI's random transforms keep their own RNG

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except RuntimeError as e:
            ours = _named(e)
            if ours is None:
                raise
            raise ours  # noqa: B904


class VolumeDataModule(SeededTrainData, L.LightningDataModule):
    """Train on every fold but ``fold``, test on ``fold`` (one case per batch, whole volume)."""

    def __init__(self, datalist: str, folds_file: str, fold: int = 0, window: tuple[float, float] = (0.0, 140.0),
                 spacing: Sequence[float] | None = None, roi: Sequence[int] | None = None, flip: float = 0.5,
                 elastic: float = 0.0, batch_size: int = 2, num_workers: int = 0, cache_rate: float = 1.0,
                 train_on: str = "other_folds"):
        super().__init__()
        if train_on not in ("other_folds", "all"):
            raise ValueError(f"train_on must be other_folds or all, got '{train_on}'")
        self.datalist, self.folds_file, self.fold = datalist, folds_file, fold
        self.window, self.spacing, self.roi = tuple(window), spacing, roi
        self.flip, self.elastic, self.train_on = flip, elastic, train_on
        self.batch_size, self.num_workers, self.cache_rate = batch_size, num_workers, cache_rate
        self.summary = DataSummary()
        self._ready = False

    @property
    def num_folds(self) -> int:
        folds = read_folds(self.folds_file) if self.folds_file else _datalist_folds(self.datalist, load_datalist(self.datalist))
        return len(set(folds.values()))

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        cases = load_datalist(self.datalist, summary=self.summary)
        for c in cases:
            check_pair(c)
        if self.train_on == "all":  # pre-training on a source set: no folds
            train, test = cases, []
            self.summary.layout = f"Decathlon datalist {self.datalist} (all cases train; no folds)"
        else:
            folds = (read_folds(self.folds_file, cases, self.datalist, self.summary) if self.folds_file
                     else _datalist_folds(self.datalist, cases))
            self.summary.layout = (f"Decathlon datalist {self.datalist} + fold file {self.folds_file}" if self.folds_file
                                   else f"Decathlon datalist {self.datalist} with its own 'fold' keys")
            if self.fold not in set(folds.values()):
                raise DatasetError(f"{self.folds_file}: no fold {self.fold} (folds {sorted(set(folds.values()))})")
            for c in cases:
                c["fold"] = folds[c["case_id"]]
            train = [c for c in cases if c["fold"] != self.fold]
            test = [c for c in cases if c["fold"] == self.fold]
        kw = dict(window=self.window, spacing=self.spacing, roi=self.roi, flip=self.flip, elastic=self.elastic)
        self.train_set = CaseDataset(train, build_transforms(True, **kw), cache_rate=self.cache_rate, progress=False)
        self.test_set = CaseDataset(test, build_transforms(False, **kw), cache_rate=self.cache_rate, progress=False)
        self.test_cases = test
        for split, part in (("train", train), ("test", test)):
            self.summary.count(split, "cases", len(part))
            self.summary.count(split, "patients", len({c["patient_id"] for c in part}))
        if self.train_on != "all":
            for f in sorted(set(folds.values())):
                self.summary.count("folds", f"fold_{f}", sum(1 for c in cases if c["fold"] == f))
        self._ready = True

    def data_summary(self) -> dict:
        return {"fold": None if self.train_on == "all" else self.fold, **self.summary.as_dict()}

    def train_dataloader(self):
        return self.seeded_loader(self.train_set, self.batch_size, self.num_workers, loader=DataLoader)

    def test_dataloader(self):
        return eval_loader(self.test_set, 1, self.num_workers, loader=DataLoader)
