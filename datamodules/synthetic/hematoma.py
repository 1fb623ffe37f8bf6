"""CT-like head volumes with hematomas, written as NIfTI + Decathlon datalists.

Every volume: air (-1000 HU), an ellipsoidal skull shell (1000 HU), brain (~35 HU), noise. Two lesion types:
- ``source`` (TBI-like): convex, lens-shaped bleeds against the inner skull, bright (70-80 HU);
- ``target`` (aSAH-like): thin, elongated sulcal/cisternal bleeds, fainter (52-62 HU), noisier, with a
  bias field — a contrast, shape and size shift.
Voxels are ``spacing`` mm, so lesion volumes in mL span the clinical bins. A few target patients have two
scans, so folds must be made per patient.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ..volumes import VolumeDataModule, load_datalist, make_folds, write_folds
from ._cache import build_once, cache_key


def _grid(size: int) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(size) + 0.5] * 3, indexing="ij"), -1)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid(grid, center, radii, rot) -> np.ndarray:
    local = (grid - center) @ rot
    return ((local / radii) ** 2).sum(-1) <= 1.0


def head_volume(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (image in HU int16, mask uint8), both [size]*3."""
    grid = _grid(size)
    c = np.full(3, size / 2) + rng.uniform(-1, 1, 3)
    outer = np.array([0.46, 0.44, 0.42]) * size * rng.uniform(0.95, 1.0)
    inner = outer - rng.uniform(1.2, 1.8)
    rot = _rotation(rng) if rng.random() < 0.3 else np.eye(3)
    head, brain = _ellipsoid(grid, c, outer, rot), _ellipsoid(grid, c, inner, rot)
    image = np.full((size,) * 3, -1000.0)
    image[head] = 1000.0
    image[brain] = 35.0 + rng.normal(0, 2)
    mask = np.zeros((size,) * 3, bool)
    if kind == "source":
        for _ in range(int(rng.integers(1, 4))):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            centre = c + direction * inner.min() * rng.uniform(0.75, 0.95)
            radii = np.array([rng.uniform(1.5, 3.0), *rng.uniform(3.0, 7.0, 2)])
            # lens: the short axis points towards the skull
            basis = np.linalg.qr(np.stack([direction, rng.standard_normal(3), rng.standard_normal(3)], 1))[0]
            mask |= _ellipsoid(grid, centre, radii, basis) & brain
        level, noise = rng.uniform(70, 80), 6.0
    elif kind == "target":
        for _ in range(int(rng.integers(1, 10))):
            centre = c + rng.uniform(-0.6, 0.6, 3) * inner
            radii = np.array([rng.uniform(3.0, 10.0), rng.uniform(1.0, 2.2), rng.uniform(1.0, 2.2)])
            mask |= _ellipsoid(grid, centre, radii, _rotation(rng)) & brain
        level, noise = rng.uniform(52, 62), 9.0
    else:
        raise ValueError(f"kind must be source or target, got '{kind}'")
    image[mask] = level
    if kind == "target":  # linear bias field over the brain
        image[brain] += ((grid[brain] - c) @ rng.standard_normal(3)) * 0.6
    image += rng.normal(0, noise, image.shape) * (image > -500)
    return np.round(image).astype(np.int16), mask.astype(np.uint8)


def generate_hematoma(root: str | Path, n_source: int = 40, n_target: int = 18, size: int = 24,
                      spacing: float = 5.0, repeat_patients: int = 3, seed: int = 0) -> Path:
    """Write ``root/{source,target}/{images,labels}/*.nii.gz`` + ``root/datalist_{source,target}.json`` once."""
    root = Path(root)
    if (root / "meta.json").exists():
        return root
    affine = np.diag([spacing, spacing, spacing, 1.0])
    meta = dict(n_source=n_source, n_target=n_target, size=size, spacing=spacing, seed=seed)
    with build_once(root, meta) as tmp:
        for kind, n, offset in (("source", n_source, 0), ("target", n_target, 1)):
            (tmp / kind / "images").mkdir(parents=True)
            (tmp / kind / "labels").mkdir(parents=True)
            rng = np.random.default_rng([seed, offset])
            entries = []
            n_patients = n - (repeat_patients if kind == "target" else 0)
            for i in range(n):
                case = f"{kind}_{i:03d}"
                patient = f"{kind}_p{(i if i < n_patients else i - n_patients):03d}"
                image, mask = head_volume(rng, size, kind)
                nib.save(nib.Nifti1Image(image, affine), tmp / kind / "images" / f"{case}.nii.gz")
                nib.save(nib.Nifti1Image(mask, affine), tmp / kind / "labels" / f"{case}.nii.gz")
                entries.append({"image": f"{kind}/images/{case}.nii.gz", "label": f"{kind}/labels/{case}.nii.gz",
                                "case_id": case, "patient_id": patient})
            (tmp / f"datalist_{kind}.json").write_text(json.dumps({"training": entries}, indent=1))
    return root


class SyntheticHematomaDataModule(VolumeDataModule):
    """Target (aSAH-like) cases with a fold file made once per (k, seed); ``source_datalist`` for pre-training."""

    def __init__(self, cache_dir: str, n_source: int = 40, n_target: int = 18, size: int = 24, spacing: float = 5.0,
                 gen_seed: int = 0, k: int = 3, fold_seed: int = 0, stratify: str | None = None, **kwargs):
        self.gen_kwargs = dict(n_source=n_source, n_target=n_target, size=size, spacing=spacing, seed=gen_seed)
        root = Path(cache_dir) / f"synthetic_hematoma-{cache_key(self.gen_kwargs)}"
        self.k, self.fold_seed, self.stratify = k, fold_seed, stratify
        super().__init__(datalist=str(root / "datalist_target.json"),
                         folds_file=str(root / f"folds_k{k}_seed{fold_seed}_{stratify or 'none'}.json"), **kwargs)
        self.summary.compare_official = False  # generated in a real layout, not the release
        self.root = root
        self.source_datalist = str(root / "datalist_source.json")

    def prepare_data(self) -> None:
        generate_hematoma(self.root, **self.gen_kwargs)
        if not Path(self.folds_file).exists():
            cases = load_datalist(self.datalist)
            write_folds(self.folds_file, self.datalist, make_folds(cases, self.k, self.fold_seed, self.stratify),
                        self.k, self.fold_seed, self.stratify, cases)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)
