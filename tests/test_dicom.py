"""DICOM series import (python -m transfer.data import-dicom) on series built from pydicom's real CT slice, checked
voxel by voxel against ITK's independent series reader, and each refusal the issue lists."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import cli, repo_root
from datamodules.dicom import import_dicom
from dicom_series import ct_series, sitk_volume

OBLIQUE = (0.8660254, 0.5, 0.0, 0.0, 0.0, -1.0)  # a coronal-ish plane rotated 30 degrees about the body axis


def _canonical(img):
    img = nib.as_closest_canonical(img)
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("orientation,thickness,slope", [((1, 0, 0, 0, 1, 0), 5.0, 1.0), (OBLIQUE, 2.5, 2.0)])
def test_import_matches_itk_voxel_by_voxel(tmp_path, orientation, thickness, slope):
    import SimpleITK  # noqa: F401  (the independent reader: a dev dependency, never skipped)

    uid = ct_series(tmp_path / "src" / "study", n=9, orientation=orientation, thickness=thickness, slope=slope)
    report = import_dicom(tmp_path / "src", tmp_path / "out")
    assert not report.refused and len(report.imported) == 1
    entry = report.imported[0]
    ours = nib.load(tmp_path / "out" / entry["image"])
    theirs = nib.load(sitk_volume(tmp_path / "src" / "study", uid, tmp_path / "itk.nii.gz"))
    (a, a_aff), (b, b_aff) = _canonical(ours), _canonical(theirs)
    assert a.shape == b.shape and 9 in ours.shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a_aff, b_aff, atol=1e-4)
    assert np.issubdtype(ours.get_data_dtype(), np.integer)
    # HU: the stored value times RescaleSlope plus RescaleIntercept (-1024) of the shipped slice
    raw = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(float)
    assert a.min() == raw.min() * slope - 1024
    # the voxel size is PixelSpacing x PixelSpacing x slice distance
    assert sorted(np.round(ours.header.get_zooms(), 4)) == sorted([0.6615, 0.6615, thickness])


def test_slices_are_ordered_by_position_not_by_name_or_instance_number(tmp_path):
    ct_series(tmp_path / "src", n=8, reverse_instance=True, seed=3)
    report = import_dicom(tmp_path / "src", tmp_path / "out")
    img = nib.as_closest_canonical(nib.load(tmp_path / "out" / report.imported[0]["image"]))
    data = np.asarray(img.dataobj)
    # slice i was written with its pixels +13 i: the volume rises along the body axis (inferior -> superior)
    means = [float(data[..., k].mean()) for k in range(data.shape[2])]
    assert all(b > a for a, b in zip(means, means[1:]))


def test_datalist_patients_localizer_and_other_files(tmp_path):
    src = tmp_path / "export"
    axial = ct_series(src / "p1" / "study" / "axial", n=8, patient="P1", number=2)
    ct_series(src / "p1" / "study" / "scout", n=2, patient="P1", number=1, localizer=True,
              orientation=(0, 1, 0, 0, 0, -1))
    ct_series(src / "p2", n=6, patient="P2", number=5)
    (src / "notes.txt").write_text("not dicom")
    report = import_dicom(src, tmp_path / "out")
    assert not report.refused
    assert [e["patient_id"] for e in report.imported] == ["P1", "P2"]
    assert report.imported[0]["series_uid"] == axial and report.imported[0]["slices"] == 8
    assert len(report.skipped["localizer (scout) series"]) == 1
    assert report.skipped["not a DICOM file"] == [str(src / "notes.txt")]
    doc = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert doc["training"] == [] and [e["case_id"] for e in doc["test"]] == [e["case_id"] for e in report.imported]
    assert all((tmp_path / "out" / e["image"]).exists() for e in doc["test"])


def test_a_label_pairs_with_its_series_and_must_share_the_grid(tmp_path):
    uid = ct_series(tmp_path / "src", n=6)
    first = import_dicom(tmp_path / "src", tmp_path / "a")
    img = nib.load(tmp_path / "a" / first.imported[0]["image"])
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), label)
    report = import_dicom(tmp_path / "src", tmp_path / "b", labels={uid: label})
    doc = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert len(doc["training"]) == 1 and doc["test"] == []
    assert (tmp_path / "b" / doc["training"][0]["label"]).resolve() == label.resolve()
    from datamodules.volumes import load_datalist

    assert load_datalist(tmp_path / "b" / "dataset.json")[0]["patient_id"] == "1CT1"
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine @ np.diag([1, 1, 2, 1])), label)
    from datamodules.errors import DatasetError

    with pytest.raises(DatasetError, match="affines differ"):
        import_dicom(tmp_path / "src", tmp_path / "c", labels={uid: label})
    assert report.imported


@pytest.mark.parametrize("case,kw,message", [
    ("gap", dict(n=9, drop=(4,)), r"uneven slice spacing: a gap of 10\.000 mm between \w+ and \w+ where the others are 5\.000 mm"),
    ("few", dict(n=3), r"3 slice\(s\) .*a volume needs at least 5"),
    ("mixed", dict(n=8, orientation=OBLIQUE, odd_orientation=(2,)), r"mixed orientations in one series: 1 of 8 slices"),
    ("tilt", dict(n=8, tilt_deg=12), r"gantry tilt of 12\.00 degrees .*--resample-tilt"),
])
def test_refusals_name_the_series_and_the_slices_and_the_rest_goes_on(tmp_path, case, kw, message):
    bad = ct_series(tmp_path / "src" / "bad", **kw)
    ct_series(tmp_path / "src" / "good", n=6, patient="OK")
    report = import_dicom(tmp_path / "src", tmp_path / "out")
    assert [e["patient_id"] for e in report.imported] == ["OK"]
    assert list(report.refused) == [bad]
    assert bad in report.refused[bad]
    import re

    assert re.search(message, report.refused[bad]), report.refused[bad]


def test_gantry_tilt_resampled_on_request(tmp_path):
    ct_series(tmp_path / "src", n=8, tilt_deg=12)
    report = import_dicom(tmp_path / "src", tmp_path / "out", allow_tilt=True)
    assert not report.refused
    img = nib.load(tmp_path / "out" / report.imported[0]["image"])
    assert img.shape[2] == 8 and img.shape[1] > 128  # the leaning stack fits a taller orthogonal grid


def test_compressed_pixel_data_decodes_or_names_its_syntax(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ct_series(tmp_path / "plain", n=6, seed=1, uid="1.2.3.4.5")
    ct_series(tmp_path / "rle", n=6, seed=1, uid="1.2.3.4.5")
    for f in (tmp_path / "rle").iterdir():  # RLE: pydicom's own decoder
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    a = import_dicom(tmp_path / "plain", tmp_path / "a").imported[0]
    b = import_dicom(tmp_path / "rle", tmp_path / "b").imported[0]
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "a" / a["image"]).dataobj),
                                  np.asarray(nib.load(tmp_path / "b" / b["image"]).dataobj))
    for f in (tmp_path / "rle").iterdir():  # HTJ2K: no installed decoder
        ds = pydicom.dcmread(f)
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 20])
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"
        ds.save_as(f)
    report = import_dicom(tmp_path / "rle", tmp_path / "c")
    assert "High-Throughput JPEG 2000" in report.refused["1.2.3.4.5"]
    assert "pylibjpeg" in report.refused["1.2.3.4.5"]


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    ct_series(tmp_path / "src" / "good", n=6)
    ct_series(tmp_path / "src" / "bad", n=8, drop=(3,), patient="GAP")
    res = cli("transfer.data", "import-dicom", str(tmp_path / "src"), str(tmp_path / "out"), cwd=repo_root())
    assert res.returncode == 1, res.stderr
    assert "1 series imported, 1 refused" in res.stdout
    assert "REFUSED" in res.stderr and "patient GAP" in res.stderr and "Traceback" not in res.stderr
    from transfer.data import import_main

    assert import_main([str(tmp_path / "nowhere"), str(tmp_path / "o2")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert import_main([str(tmp_path / "empty"), str(tmp_path / "o3")]) == 2
    assert "no DICOM image series" in capsys.readouterr().err
