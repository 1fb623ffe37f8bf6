"""A predicted mask as a DICOM Segmentation object (highdicom) that references the series it was predicted on, so the
result can go back to a viewer or a PACS beside its scan.

The mask lives in the imported NIfTI's grid; each pixel of each source slice is located in that grid through the
two geometries (DICOM's ImagePositionPatient / ImageOrientationPatient / PixelSpacing in LPS, NIfTI's affine in
RAS). For a series imported as it was (no tilt resampling) the grids coincide and every pixel lands on a voxel
centre; anything else is refused rather than interpolated.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from datamodules.errors import DatasetError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def mask_on_slices(mask: np.ndarray, affine: np.ndarray, slices: list) -> np.ndarray:
    """``mask`` (NIfTI voxels) sampled on the source slices: (frames, Rows, Columns), frames in ``slices`` order."""
    inverse = np.linalg.inv(affine)
    out = []
    for ds in slices:
        rows, cols = int(ds.Rows), int(ds.Columns)
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
        d_row, d_col = (float(v) for v in ds.PixelSpacing)  # spacing between rows, between columns
        i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = (np.asarray(ds.ImagePositionPatient, float)[None, None]
               + j[..., None] * d_col * row_dir + i[..., None] * d_row * col_dir)
        ras = lps @ LPS_TO_RAS.T
        vox = ras @ inverse[:3, :3].T + inverse[:3, 3]
        idx = np.rint(vox).astype(int)
        if np.abs(vox - idx).max() > 1e-2 or (idx < 0).any() or (idx >= np.array(mask.shape)).any():
            raise DatasetError(f"{ds.filename}: its pixels do not fall on the mask's voxels (a resampled series?); "
                               f"no DICOM SEG written")
        out.append(mask[idx[..., 0], idx[..., 1], idx[..., 2]])
    return np.stack(out).astype(bool)


def write_dicom_seg(mask_path: Path, source_files: list[str], out: Path, label: str = "hematoma") -> Path:
    """``out``: a binary DICOM SEG of ``mask_path`` over the source series (one segment, algorithm-made)."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as e:
        raise DatasetError("--dicom-seg needs highdicom: pip install highdicom (or pip install \".[clinical]\")") from e
    import pydicom
    from pydicom.uid import generate_uid

    from transfer import __version__
    from datamodules.files import atomic_path

    slices = [pydicom.dcmread(f) for f in source_files]
    img = nib.load(mask_path)
    frames = mask_on_slices(np.asarray(img.dataobj) > 0, img.affine, slices)
    algorithm = hd.AlgorithmIdentificationSequence(name="transfer.predict", version=__version__,
                                                    family=codes.DCM.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Hemorrhage, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=slices, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=generate_uid(), series_number=9000,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="transfer",
        manufacturer_model_name="transfer.predict", software_versions=__version__, device_serial_number="none",
        omit_empty_frames=False)
    with atomic_path(out) as tmp:
        seg.save_as(tmp)
    return out
