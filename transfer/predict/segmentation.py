"""Masks for new scans from a k-fold segmentation run: the folds' probabilities averaged (nnU-Net's ensemble),
optionally over mirrored copies (test-time augmentation), written as ``uint8`` NIfTI in each scan's own grid.

Each scan is read and prepared once (the evaluation's transforms: RAS, the run's spacing, its HU window) and every
fold model runs on the same tensor; the averaged probability map is mapped back through the inverse of those
transforms (reorientation, resampling) onto the scan's grid, then thresholded.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from datamodules.errors import DatasetError
from datamodules.volumes import build_transforms, save_nifti
from transfer.predict.inputs import Item

VOLUME_COLUMNS = ["case", "patient_id", "image", "mask", "volume_ml", "largest_component_ml", "components", "folds", "tta"]


class CaseError(DatasetError):
    """One case cannot be predicted; the others go on."""


def check_scan(item: Item, in_channels: int = 1) -> nib.Nifti1Image:
    """The scan's header: a 3-D single-channel volume (what the fold models were trained on)."""
    try:
        img = nib.load(item.path)
    except Exception as e:  # nibabel raises several types for corrupt or foreign files
        raise CaseError(f"{item.path}: cannot read it as NIfTI ({type(e).__name__}: {e})") from e
    shape = img.shape
    if len(shape) != 3 or in_channels != 1:
        raise CaseError(f"{item.path}: shape {shape} is not a 3-D volume with {in_channels} channel(s), which the "
                        f"run's models take (a 4-D series? split it into volumes)")
    return img


def mirror_axes(tta: bool, spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """No flip, or every combination of flips over the spatial axes (2^d passes, as nnU-Net mirrors)."""
    axes = range(2, 2 + spatial_dims)
    return [()] if not tta else [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def ensemble_probabilities(models: list, image: torch.Tensor, tta: bool) -> torch.Tensor:
    """Mean foreground probability over fold models (and mirrored passes); ``image``: [1, C, *spatial]."""
    total, n = None, 0
    for model in models:
        for axes in mirror_axes(tta, image.dim() - 2):
            x = torch.flip(image, axes) if axes else image
            p = model._probabilities(x)
            p = torch.flip(p, axes) if axes else p
            total = p if total is None else total + p
            n += 1
    return total / n


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest connected component (26-connectivity) and the number of components."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if count == 0:
        return np.zeros_like(mask), 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1), int(count)


def write_mask(mask: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    """``mask`` as uint8 NIfTI with the scan's own affine and header (qform/sform codes kept)."""
    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(mask.astype(np.uint8), like.affine, header)
    out.header.set_slope_inter(1, 0)
    save_nifti(out, path)


class SegmentationPredictor:
    table, columns, key = "volumes.csv", VOLUME_COLUMNS, "case"

    def __init__(self, models: list, folds: list[int | None], cfg, datamodule, tta: bool = False,
                 save_probabilities: bool = False, dicom_seg: bool = False, device="cpu"):
        """``datamodule``: the run's (constructed, not set up): its HU window and resampling are evaluation's.
        ``dicom_seg``: also a DICOM SEG for every case imported from DICOM. ``device``: where ``models`` are; the
        prepared scan goes there and its probabilities come back for the inverse transforms."""
        self.models, self.folds, self.tta, self.save_probabilities = models, folds, tta, save_probabilities
        self.device = torch.device(device)
        self.dicom_seg = dicom_seg
        self.threshold = float(cfg.model.get("threshold", 0.5))
        self.in_channels = int(cfg.model.net.get("in_channels", 1))
        self.transform = build_transforms(False, window=tuple(datamodule.window), spacing=datamodule.spacing, roi=None,
                                          flip=0.0, elastic=0.0, labelled=False)

    def settings(self) -> dict:
        return {"task": "segmentation", "folds": self.folds, "tta": self.tta, "threshold": self.threshold,
                "dicom_seg": self.dicom_seg}

    def _seg_path(self, item: Item, out: Path) -> Path | None:
        return out / f"{item.name}.seg.dcm" if self.dicom_seg and item.source_files else None

    def kept(self, item: Item, out: Path, earlier: dict) -> dict | None:
        """The row of a mask an earlier call wrote (recomputed from the mask itself), or None."""
        seg = self._seg_path(item, out)
        done = (out / f"{item.name}.nii.gz").is_file() and (seg is None or seg.is_file())
        return self.row(item, out) if done else None

    def prepare(self, item: Item) -> tuple[nib.Nifti1Image, torch.Tensor]:
        """The scan's header and its prepared image (read, reoriented, resampled, windowed): CPU work that
        ``transfer.predict`` runs for the next case while the models run on this one."""
        scan = check_scan(item, self.in_channels)
        try:
            data = self.transform({"image": str(item.path), "case_id": item.name})
        except Exception as e:
            raise CaseError(f"{item.path}: cannot be prepared ({type(e).__name__}: {e})") from e
        return scan, data["image"]

    def probabilities(self, item: Item, prepared: tuple | None = None) -> tuple[np.ndarray, nib.Nifti1Image]:
        """The ensemble's foreground probability in the scan's own grid (``prepared``: what ``prepare`` gave)."""
        scan, image = prepared if prepared is not None else self.prepare(item)
        x = image.as_tensor().unsqueeze(0).to(self.device)
        prob = ensemble_probabilities(self.models, x, self.tta)[0].cpu()
        from monai.data import MetaTensor

        back = self.transform.inverse({"image": MetaTensor(prob, meta=image.meta,
                                                           applied_operations=image.applied_operations)})["image"]
        back = np.asarray(back[0].detach().cpu(), dtype=np.float32)
        if back.shape != scan.shape:
            raise CaseError(f"{item.path}: the prediction came back as {back.shape}, the scan is {scan.shape}")
        return back, scan

    def predict(self, item: Item, out: Path, prepared: tuple | None = None) -> dict:
        prob, scan = self.probabilities(item, prepared)
        mask = prob > self.threshold
        write_mask(mask, scan, out / f"{item.name}.nii.gz")
        seg = self._seg_path(item, out)
        if seg is not None:
            from transfer.predict.dicom_seg import write_dicom_seg

            write_dicom_seg(out / f"{item.name}.nii.gz", item.source_files, seg)
        if self.save_probabilities:
            header = scan.header.copy()
            header.set_data_dtype(np.float32)
            save_nifti(nib.Nifti1Image(prob, scan.affine, header), out / f"{item.name}_prob.nii.gz")
        return self.row(item, out)

    def row(self, item: Item, out: Path) -> dict:
        """The volumes row of a written mask (also for masks kept from an earlier, resumed call)."""
        path = out / f"{item.name}.nii.gz"
        img = nib.load(path)
        mask = np.asarray(img.dataobj) > 0
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        largest, count = largest_component(mask)
        return {"case": item.name, "patient_id": item.patient_id or "", "image": str(item.path), "mask": path.name,
                "volume_ml": round(float(mask.sum()) * voxel_ml, 4),
                "largest_component_ml": round(float(largest.sum()) * voxel_ml, 4), "components": count,
                "folds": " ".join(str(f) for f in self.folds), "tta": self.tta}


def settings_json(settings: dict) -> str:
    return json.dumps(settings, indent=1, sort_keys=True) + "\n"
