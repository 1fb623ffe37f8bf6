"""DICOM series to NIfTI: what a scanner or PACS exports, as the suite's datalist of volumes.

Files are grouped by ``SeriesInstanceUID`` (a localizer or a second reconstruction is its own series, never mixed
into the axial volume). Each series is checked from its headers before any pixel is decoded, and refused with a
message that names the series and the slices: mixed orientations or matrix sizes, two slices at one position, a
missing slice or uneven slice spacing, gantry tilt, too few slices. The conversion of a checked series (slice
order along the slice normal, Hounsfield units from RescaleSlope/RescaleIntercept, spacing from PixelSpacing and
the slice positions, the LPS patient frame turned into NIfTI's RAS affine) is dicom2nifti's. Pixel data is decoded
by pydicom's plugins; a transfer syntax that none of the installed ones decodes is an error naming the syntax and
the packages that would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import nibabel as nib
import numpy as np

from .errors import DatasetError
from .volumes import save_nifti

log = logging.getLogger("datamodules")

MIN_SLICES = 5
ORIENTATION_TOL = 1e-4      # direction cosines: equal within this
TILT_TOL_DEG = 0.05         # a slice stack leaning more than this is gantry-tilted
SPACING_TOL = (0.05, 0.02)  # slice spacing uneven when off the median by more than 0.05 mm and 2 %


class DicomSeriesError(DatasetError):
    """A series that cannot become a volume as it is; the message names the series and the slices."""


@dataclass
class Slice:
    path: Path
    position: np.ndarray        # ImagePositionPatient, mm (LPS)
    orientation: np.ndarray     # ImageOrientationPatient: row then column direction cosines
    matrix: tuple[int, int]     # Rows, Columns
    spacing: tuple[float, float]
    instance: int | None
    localizer: bool


@dataclass
class Series:
    uid: str
    patient_id: str | None
    study_uid: str
    number: int | None
    modality: str
    description: str
    transfer_syntax: str
    slices: list[Slice] = field(default_factory=list)

    def label(self) -> str:
        return f"series {self.uid} ({self.modality} '{self.description}', #{self.number}, patient {self.patient_id})"


@dataclass
class ImportReport:
    imported: list[dict] = field(default_factory=list)      # datalist entries
    refused: dict[str, str] = field(default_factory=dict)   # series uid -> why
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # reason -> files or series
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.warning(text)


def _pydicom():
    try:
        import pydicom
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise DatasetError("reading DICOM needs pydicom: pip install pydicom dicom2nifti") from e
    return pydicom


def scan(src: str | Path, report: ImportReport | None = None) -> list[Series]:
    """Every DICOM image under ``src`` (any depth), grouped by SeriesInstanceUID; headers only. Files that are
    not DICOM, or DICOM without an image (reports, DICOMDIR), are counted in ``report.skipped``."""
    pydicom = _pydicom()
    src = Path(src)
    if not src.exists():
        raise DatasetError(f"{src}: no such folder")
    report = report if report is not None else ImportReport()
    groups: dict[str, Series] = {}
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # pydicom raises several types for files that are not DICOM
            report.skipped["not a DICOM file"].append(str(path))
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds and getattr(ds, "Rows", None) is None:
            report.skipped["DICOM without an image (report, DICOMDIR, presentation state)"].append(str(path))
            continue
        missing = [k for k in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
                   if k not in ds]
        if missing:
            report.skipped[f"image without {', '.join(missing)} (no patient geometry)"].append(str(path))
            continue
        uid = str(ds.SeriesInstanceUID)
        if uid not in groups:
            meta = getattr(ds, "file_meta", None)
            groups[uid] = Series(uid=uid, patient_id=str(ds.PatientID) if ds.get("PatientID") else None,
                                 study_uid=str(ds.get("StudyInstanceUID", "")),
                                 number=int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
                                 modality=str(ds.get("Modality", "")), description=str(ds.get("SeriesDescription", "")),
                                 transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "")))
        image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
        groups[uid].slices.append(Slice(
            path=path, position=np.asarray(ds.ImagePositionPatient, float),
            orientation=np.asarray(ds.ImageOrientationPatient, float),
            matrix=(int(ds.Rows), int(ds.Columns)), spacing=tuple(float(v) for v in ds.PixelSpacing),
            instance=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
            localizer="LOCALIZER" in image_type))
    return sorted(groups.values(), key=lambda s: (s.patient_id or "", s.study_uid, s.number or 0, s.uid))


def _names(slices, limit: int = 4) -> str:
    shown = ", ".join(s.path.name for s in slices[:limit])
    return shown + (f" and {len(slices) - limit} more" if len(slices) > limit else "")


def check_series(series: Series, min_slices: int = MIN_SLICES, allow_tilt: bool = False) -> list[Slice]:
    """The series' slices in order along the slice normal, or a :class:`DicomSeriesError` naming what is wrong."""
    slices = [s for s in series.slices if not s.localizer]
    if not slices:
        raise DicomSeriesError(f"{series.label()}: a localizer (scout) only, not a volume")
    # the majority orientation is the series'; the others are named
    first = max(slices, key=lambda a: sum(np.allclose(a.orientation, b.orientation, atol=ORIENTATION_TOL) for b in slices))
    other = [s for s in slices if not np.allclose(s.orientation, first.orientation, atol=ORIENTATION_TOL)]
    if other:
        raise DicomSeriesError(
            f"{series.label()}: mixed orientations in one series: {len(other)} of {len(slices)} slices "
            f"({_names(other)}) have ImageOrientationPatient {np.round(other[0].orientation, 4).tolist()}, the others "
            f"{np.round(first.orientation, 4).tolist()} ({first.path.name})")
    other = [s for s in slices if s.matrix != first.matrix or not np.allclose(s.spacing, first.spacing, atol=1e-4)]
    if other:
        raise DicomSeriesError(
            f"{series.label()}: slices of different sizes: {_names(other)} are {other[0].matrix} at "
            f"{other[0].spacing} mm, {first.path.name} is {first.matrix} at {first.spacing} mm")
    if len(slices) < min_slices:
        raise DicomSeriesError(f"{series.label()}: {len(slices)} slice(s) ({_names(slices)}); a volume needs at least "
                               f"{min_slices} (--min-slices)")
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    depth = np.array([s.position @ normal for s in slices])
    steps = np.diff(depth)
    same = [i for i, d in enumerate(steps) if abs(d) < 1e-3]
    if same:
        i = same[0]
        raise DicomSeriesError(
            f"{series.label()}: {slices[i].path.name} and {slices[i + 1].path.name} lie at the same position "
            f"{np.round(slices[i].position, 3).tolist()} (duplicate slices or two volumes in one series)")
    median = float(np.median(steps))
    bad = [i for i, d in enumerate(steps) if abs(d - median) > max(SPACING_TOL[0], SPACING_TOL[1] * median)]
    if bad:
        i = bad[0]
        kind = f"a gap of {steps[i]:.3f} mm" if steps[i] > median else f"a step of only {steps[i]:.3f} mm"
        raise DicomSeriesError(
            f"{series.label()}: uneven slice spacing: {kind} between {slices[i].path.name} and "
            f"{slices[i + 1].path.name} where the others are {median:.3f} mm apart (missing slice?); "
            f"{len(bad)} uneven step(s) in all")
    along = np.diff(np.stack([s.position for s in slices]), axis=0)
    lean = np.degrees(np.arctan2(np.linalg.norm(along - np.outer(along @ normal, normal), axis=1), along @ normal))
    if float(lean.max()) > TILT_TOL_DEG and not allow_tilt:
        raise DicomSeriesError(
            f"{series.label()}: gantry tilt of {float(np.median(lean)):.2f} degrees (slice positions do not follow "
            f"the slice normal, e.g. {slices[0].path.name} to {slices[1].path.name}); pass --resample-tilt to resample "
            f"it onto an orthogonal grid (dicom2nifti's resampling)")
    return slices


@contextlib.contextmanager
def _dicom2nifti_settings(resample: bool) -> Iterator:
    import dicom2nifti.settings as settings

    saved = (settings.validate_orthogonal, settings.resample)
    try:
        if resample:
            settings.disable_validate_orthogonal()
            settings.enable_resampling()
            settings.set_resample_spline_interpolation_order(1)
        yield
    finally:
        settings.validate_orthogonal, settings.resample = saved


def _decode_error(series: Series, error: Exception) -> DicomSeriesError:
    from pydicom.uid import UID

    syntax = UID(series.transfer_syntax) if series.transfer_syntax else None
    name = f"{syntax.name} ({syntax})" if syntax else "an unknown transfer syntax"
    return DicomSeriesError(
        f"{series.label()}: cannot decode its pixel data, stored as {name} ({_names(series.slices, 1)}): {error} "
        f"(pydicom decodes compressed pixel data through the packages it names: pip install them, or export the "
        f"series uncompressed)")


def to_nifti(series: Series, slices: list[Slice], allow_tilt: bool = False) -> nib.Nifti1Image:
    """The checked series as a NIfTI image (voxels in HU for CT; affine to RAS+ world, in mm)."""
    from dicom2nifti.convert_dicom import dicom_array_to_nifti

    pydicom = _pydicom()
    datasets = [pydicom.dcmread(s.path) for s in slices]
    try:
        for ds in datasets:  # decode here, so that a missing decoder is reported as such
            ds.pixel_array
    except Exception as e:
        raise _decode_error(series, e) from e
    try:
        with _dicom2nifti_settings(resample=allow_tilt), tempfile.TemporaryDirectory() as tmp:
            written = dicom_array_to_nifti(datasets, os.path.join(tmp, "series.nii"), reorient_nifti=True)["NII_FILE"]
            image = nib.load(written)
            image = nib.Nifti1Image(_compact(np.asanyarray(image.dataobj)), image.affine)
    except Exception as e:
        raise DicomSeriesError(f"{series.label()}: dicom2nifti refused it: {type(e).__name__}: {e}") from e
    if image.ndim != 3:
        raise DicomSeriesError(f"{series.label()}: converted to a {image.ndim}-D image {image.shape}, not one volume")
    if len(slices) not in image.shape and not allow_tilt:
        raise DicomSeriesError(f"{series.label()}: {len(slices)} slices became a volume of shape {image.shape}; "
                               f"the converter dropped or added slices")
    return image


def _compact(data: np.ndarray) -> np.ndarray:
    """Whole numbers that fit (HU of CT) as int16, as scanners store them; anything else as float32. Lossless."""
    if np.issubdtype(data.dtype, np.floating) and np.array_equal(data, np.round(data)) \
            and data.min() >= -32768 and data.max() <= 32767:
        return data.astype(np.int16)
    return data.astype(np.float32) if data.dtype == np.float64 else data


def case_id_of(series: Series) -> str:
    """``<PatientID>_<SeriesNumber>`` made file-safe, with a short hash of the series UID for uniqueness."""
    base = f"{series.patient_id or 'nopatient'}_s{series.number if series.number is not None else 'x'}"
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")
    return f"{base}_{hashlib.sha1(series.uid.encode()).hexdigest()[:6]}"


def import_dicom(src: str | Path, out: str | Path, labels: Mapping[str, str | Path] | None = None,
                 min_slices: int = MIN_SLICES, allow_tilt: bool = False) -> ImportReport:
    """Every volume series under ``src`` as ``out/images/<case>.nii.gz`` and ``out/dataset.json`` (Decathlon
    form): cases with a label (``labels``: SeriesInstanceUID or case id -> label NIfTI, which must share the image's
    grid) under ``training``, the others under ``test``. Refused series are reported, the rest imported."""
    from .volumes import check_pair

    out = Path(out)
    report = ImportReport()
    labels = {str(k): Path(v) for k, v in (labels or {}).items()}
    used_labels: set[str] = set()
    training, test = [], []
    for series in scan(src, report):
        if all(s.localizer for s in series.slices):
            report.skipped["localizer (scout) series"].append(series.label())
            continue
        n_loc = sum(s.localizer for s in series.slices)
        if n_loc:
            report.note(f"{series.label()}: {n_loc} localizer slice(s) in the series left out "
                        f"({_names([s for s in series.slices if s.localizer])})")
        try:
            slices = check_series(series, min_slices, allow_tilt)
            image = to_nifti(series, slices, allow_tilt)
        except DicomSeriesError as e:
            report.refused[series.uid] = str(e)
            log.error("%s", e)
            continue
        case = case_id_of(series)
        if series.patient_id is None:
            report.note(f"{series.label()}: no PatientID; case {case} counts as its own patient in folds")
        image_path = out / "images" / f"{case}.nii.gz"
        save_nifti(image, image_path)
        entry = {"image": f"images/{case}.nii.gz", "case_id": case, "patient_id": series.patient_id or case,
                 "series_uid": series.uid, "study_uid": series.study_uid, "modality": series.modality,
                 "slices": len(slices), "source_files": [str(sl.path.resolve()) for sl in slices]}
        key = series.uid if series.uid in labels else case if case in labels else None
        if key is not None:
            used_labels.add(key)
            check_pair({"case_id": case, "image": str(image_path), "label": str(labels[key])})
            entry["label"] = os.path.relpath(labels[key].resolve(), out.resolve())
            training.append(entry)
        else:
            test.append(entry)
        report.imported.append(entry)
    unused = sorted(set(labels) - used_labels)
    if unused:
        raise DatasetError(f"--label given for {', '.join(unused)}, but no imported series has that "
                           f"SeriesInstanceUID or case id")
    doc = {"name": Path(src).name, "description": f"imported from DICOM {src} by python -m transfer.data import-dicom",
           "modality": sorted({e["modality"] for e in report.imported}), "training": training, "test": test}
    from .files import atomic_write_text

    atomic_write_text(out / "dataset.json", json.dumps(doc, indent=1) + "\n")
    return report
