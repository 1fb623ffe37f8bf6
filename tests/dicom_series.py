"""Multi-slice DICOM series built from pydicom's real CT slice (``CT_small.dcm``: GE, 128 x 128, int16 with
RescaleIntercept -1024): each slice a copy with its own SOP instance, position along the slice normal and pixels,
under shuffled file names, as a PACS export leaves them."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_series(folder: Path, n: int = 8, thickness: float = 5.0, orientation=AXIAL, uid: str | None = None,
              patient: str = "1CT1", number: int = 2, drop: tuple[int, ...] = (), tilt_deg: float = 0.0,
              localizer: bool = False, slope: float = 1.0, seed: int = 0, reverse_instance: bool = True,
              odd_orientation: tuple[int, ...] = ()) -> str:
    """Write slices ``0..n-1`` (minus ``drop``) of one series under ``folder``; returns its SeriesInstanceUID.
    InstanceNumber runs against the position when ``reverse_instance``, file names are random hex."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = uid or generate_uid()
    rng = random.Random(seed)
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    origin = np.asarray(base.ImagePositionPatient, float)
    lean = np.tan(np.radians(tilt_deg)) * col  # gantry tilt: each slice shifted along the column direction
    pixels = base.pixel_array.astype(np.int32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i in drop:
            continue
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID, ds.PatientID, ds.SeriesNumber = uid, patient, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = list(AXIAL if i in odd_orientation else orientation)
        pos = origin + i * thickness * (normal + lean)
        ds.ImagePositionPatient = [round(float(v), 6) for v in pos]
        ds.SliceLocation = round(float(pos @ normal), 6)
        ds.InstanceNumber = n - i if reverse_instance else i + 1
        ds.SliceThickness = thickness
        ds.RescaleSlope = slope
        ds.ImageType = ["DERIVED", "SECONDARY", "LOCALIZER"] if localizer else ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = np.clip(np.roll(pixels, 7 * i, axis=1) + 13 * i, -32768, 32767).astype(np.int16).tobytes()
        ds.save_as(folder / f"{rng.getrandbits(48):012x}", enforce_file_format=True)
    return uid


def sitk_volume(folder: Path, uid: str, out: Path) -> Path:
    """The independent reading: ITK's GDCM series reader (its own slice sorting, rescale and LPS geometry), written
    by ITK's NIfTI writer."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    sitk.WriteImage(reader.Execute(), str(out))
    return out
