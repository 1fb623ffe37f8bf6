"""python -m transfer.predict on finished toy runs: masks in each scan's own grid from a 3-fold segmentation run,
the fold ensemble, volumes, DICOM input, resume; scores for audio and labels for images; each error."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import soundfile as sf
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import TINY, cli, compose_config, repo_root
from dicom_series import ct_series
from transfer.predict import main as predict
from transfer.runner import run

SAH = ["experiment=sah_toy", "data.n_source=6", "data.n_target=6", "data.size=16", "model.net.channels=[4,8]",
       "model.net.strides=[2]", "model.pretrain.steps=3", "trainer.max_steps=3", "callbacks=plain",
       "~variants.none", "~variants.full", "~variants.cp_lora_r32"]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """A 3-fold SAH toy run with an adapter strategy (adapter-only checkpoints on a cached pre-trained base)."""
    root = tmp_path_factory.mktemp("seg")
    run(compose_config([*SAH, f"paths.cache_dir={root / 'cache'}"], root / "run", root / "cache"))
    GlobalHydra.instance().clear()
    return root / "run" / "convlora_r4"


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Odd-sized scans stored LPS, RAS-oblique and permuted: what other converters and viewers write."""
    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    vol = rng.normal(40, 20, (19, 23, 13)).astype(np.int16)
    vol[5:12, 6:14, 4:9] = 90  # a bright blob in the HU window
    nib.save(nib.Nifti1Image(vol, np.diag([-1.5, -1.5, 4.0, 1])), folder / "lps.nii.gz")
    permuted = np.array([[0, 1.2, 0, 10], [-1.1, 0, 0, 5], [0, 0, 3.3, -20], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(1, 0, 2)), permuted), folder / "permuted.nii")
    ras = nib.as_closest_canonical(nib.load(folder / "lps.nii.gz"))  # the same scan in the world, stored RAS
    nib.save(nib.Nifti1Image(np.asarray(ras.dataobj), ras.affine), folder / "ras.nii.gz")
    return folder


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_masks_are_in_each_scans_grid_and_volumes_follow_the_voxels(seg_run, scans, tmp_path):
    assert predict([str(seg_run), "-i", str(scans), "-o", str(tmp_path / "out")]) == 0
    assert torch.is_grad_enabled()  # called from Python, it leaves the caller's autograd mode as it found it
    rows = {r["case"]: r for r in _rows(tmp_path / "out" / "volumes.csv")}
    assert set(rows) == {"lps", "permuted", "ras"}
    # one scan stored two ways: each mask in its own storage order, the same voxels in the world
    lps = nib.as_closest_canonical(nib.load(tmp_path / "out" / "lps.nii.gz"))
    ras = nib.load(tmp_path / "out" / "ras.nii.gz")
    np.testing.assert_array_equal(np.asarray(lps.dataobj), np.asarray(ras.dataobj))
    np.testing.assert_allclose(lps.affine, ras.affine, atol=1e-6)
    for name, src in (("lps", scans / "lps.nii.gz"), ("permuted", scans / "permuted.nii")):
        scan, mask = nib.load(src), nib.load(tmp_path / "out" / f"{name}.nii.gz")
        assert mask.shape == scan.shape
        np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-6)
        assert mask.get_data_dtype() == np.uint8
        voxels = np.asarray(mask.dataobj)
        assert set(np.unique(voxels)) <= {0, 1} and voxels.sum() > 0
        voxel_ml = abs(np.linalg.det(scan.affine[:3, :3])) / 1000
        assert float(rows[name]["volume_ml"]) == pytest.approx(voxels.sum() * voxel_ml, rel=1e-4)
        assert 0 < float(rows[name]["largest_component_ml"]) <= float(rows[name]["volume_ml"])
        assert rows[name]["folds"] == "0 1 2"


def test_a_fold_predicts_its_test_cases_as_its_evaluation_did(seg_run, tmp_path):
    """The same reading, window and threshold as evaluation: predicted volumes equal per_case.csv's, case by case."""
    datalist = sorted((seg_run.parent.parent / "cache").glob("synthetic_hematoma-*/datalist_target.json"))[0]
    assert predict([str(seg_run), "-i", str(datalist), "-o", str(tmp_path / "out"), "--folds", "0"]) == 0
    ours = {r["case"]: float(r["volume_ml"]) for r in _rows(tmp_path / "out" / "volumes.csv")}
    evaluated = _rows(seg_run / "fold_0" / "per_case.csv")
    assert evaluated and all(ours[r["case_id"]] == pytest.approx(float(r["pred_ml"]), abs=1e-3) for r in evaluated)


def test_the_ensemble_is_the_mean_of_the_folds_probabilities(seg_run, scans, tmp_path):
    probs = []
    for folds in (["0"], ["1"], ["2"], ["0", "1", "2"]):
        out = tmp_path / "_".join(folds)
        assert predict([str(seg_run), "-i", str(scans / "lps.nii.gz"), "-o", str(out), "--save-probabilities",
                        "--folds", *folds]) == 0
        probs.append(np.asarray(nib.load(out / "lps_prob.nii.gz").dataobj))
    np.testing.assert_allclose(probs[3], np.mean(probs[:3], axis=0), atol=1e-6)
    assert not np.allclose(probs[0], probs[1])  # the folds differ, so the test can fail
    tta = tmp_path / "tta"
    assert predict([str(seg_run), "-i", str(scans / "lps.nii.gz"), "-o", str(tta), "--tta", "--save-probabilities"]) == 0
    p = np.asarray(nib.load(tta / "lps_prob.nii.gz").dataobj)
    assert p.shape == probs[3].shape and not np.allclose(p, probs[3])


def test_resume_keeps_outputs_and_refuses_other_settings(seg_run, scans, tmp_path):
    out = tmp_path / "out"
    assert predict([str(seg_run), "-i", str(scans), "-o", str(out)]) == 0
    stamp = (out / "lps.nii.gz").stat().st_mtime_ns
    assert predict([str(seg_run), "-i", str(scans), "-o", str(out)]) == 0
    assert (out / "lps.nii.gz").stat().st_mtime_ns == stamp
    assert len(_rows(out / "volumes.csv")) == 3
    with pytest.raises(SystemExit, match=r"other settings \(folds"):
        predict([str(seg_run), "-i", str(scans), "-o", str(out), "--folds", "0"])
    assert predict([str(seg_run), "-i", str(scans), "-o", str(out), "--folds", "0", "--overwrite"]) == 0
    assert (out / "lps.nii.gz").stat().st_mtime_ns != stamp


def test_bad_cases_are_named_and_the_rest_go_on(seg_run, scans, tmp_path, capsys):
    mixed = tmp_path / "in"
    shutil.copytree(scans, mixed)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 6, 2), np.int16), np.eye(4)), mixed / "four_d.nii.gz")
    (mixed / "broken.nii.gz").write_bytes(b"not a nifti at all")
    assert predict([str(seg_run), "-i", str(mixed), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "four_d.nii.gz: shape (8, 8, 6, 2) is not a 3-D volume" in err
    assert "broken.nii.gz: cannot read it as NIfTI" in err
    assert {r["case"] for r in _rows(tmp_path / "out" / "volumes.csv")} == {"lps", "permuted", "ras"}
    assert not (tmp_path / "out" / "four_d.nii.gz").exists()



def test_run_errors(seg_run, scans, tmp_path):
    with pytest.raises(SystemExit, match="no fold 5 .*folds \\[0, 1, 2\\]"):
        predict([str(seg_run), "-i", str(scans), "-o", str(tmp_path / "a"), "--folds", "5"])
    with pytest.raises(SystemExit, match="holds runs convlora_r4: pass one of those"):
        predict([str(seg_run.parent), "-i", str(scans), "-o", str(tmp_path / "a")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no input files found"):
        predict([str(seg_run), "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "a")])
    moved = tmp_path / "moved"
    shutil.copytree(seg_run.parent, moved)  # a copied run still applies (paths re-rooted) ...
    assert predict([str(moved / "convlora_r4"), "-i", str(scans / "lps.nii.gz"), "-o", str(tmp_path / "b")]) == 0
    ckpt = moved / "convlora_r4" / "fold_1" / "checkpoints" / "last.ckpt"
    ckpt.unlink()  # ... until a fold's selected checkpoint is missing
    shutil.rmtree(seg_run.parent.parent / "gone", ignore_errors=True)
    with pytest.raises(SystemExit, match=r"fold_1: the checkpoint its selection chose, .*last\.ckpt, is missing"):
        predict([str(moved / "convlora_r4"), "-i", str(scans), "-o", str(tmp_path / "c")])


def test_dicom_folder_is_imported_and_predicted(seg_run, tmp_path):
    ct_series(tmp_path / "dicom" / "study", n=7, patient="PAT9")
    ct_series(tmp_path / "dicom" / "gap", n=8, drop=(3,), patient="GAP")
    assert predict([str(seg_run), "-i", str(tmp_path / "dicom"), "-o", str(tmp_path / "out")]) == 1  # one refused
    rows = _rows(tmp_path / "out" / "volumes.csv")
    assert [r["patient_id"] for r in rows] == ["PAT9"]
    image = nib.load(rows[0]["image"])
    mask = nib.load(tmp_path / "out" / rows[0]["mask"])
    assert mask.shape == image.shape and 7 in mask.shape
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-6)


def test_dicom_seg_references_the_series_and_matches_the_mask_on_its_slices(seg_run, tmp_path):
    """The SEG's frames, per source slice, against the NIfTI mask resampled onto the series by ITK (independent of
    the SEG writer's own geometry)."""
    import highdicom as hd
    import SimpleITK as sitk

    oblique = (0.8660254, 0.5, 0.0, 0.0, 0.0, -1.0)
    uid = ct_series(tmp_path / "dicom" / "s", n=7, patient="PAT9", orientation=oblique, thickness=3.0)
    assert predict([str(seg_run), "-i", str(tmp_path / "dicom"), "-o", str(tmp_path / "out"), "--dicom-seg"]) == 0
    (row,) = _rows(tmp_path / "out" / "volumes.csv")
    seg = hd.seg.segread(tmp_path / "out" / f"{row['case']}.seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid and seg.PatientID == "PAT9"
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom" / "s"), uid)  # ITK's slice order
    reader.SetFileNames(files)
    series = reader.Execute()
    on_series = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(tmp_path / "out" / row["mask"])), series,
                                                     sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    assert on_series.sum() == np.asarray(nib.load(tmp_path / "out" / row["mask"]).dataobj).sum() > 0
    sops = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=sops, segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(frames, on_series)


def test_cli_prints_and_exits_without_traceback(seg_run, scans, tmp_path):
    res = cli("transfer.predict", str(seg_run), "-i", str(scans), "-o", str(tmp_path / "out"), cwd=repo_root())
    assert res.returncode == 0, res.stderr[-2000:]
    assert "3 predicted, 0 kept from an earlier call, 0 failed" in res.stdout
    with pytest.raises(SystemExit, match="no such run folder"):  # SystemExit(str): the message, exit code 1
        predict([str(tmp_path / "nope"), "-i", str(scans), "-o", str(tmp_path / "o2")])



def test_the_device_is_chosen_by_name_and_a_missing_one_is_refused(seg_run, scans, tmp_path):
    """``--device cpu`` gives what the default gives on a CPU machine; where PyTorch sees a GPU, masks made there
    agree with the CPU's (probabilities within float rounding), else asking for one is refused before any output."""
    scan = str(scans / "lps.nii.gz")
    assert predict([str(seg_run), "-i", scan, "-o", str(tmp_path / "cpu"), "--device", "cpu",
                    "--save-probabilities"]) == 0
    cpu = np.asarray(nib.load(tmp_path / "cpu" / "lps_prob.nii.gz").dataobj)
    for name, why in (("gpu0", "not a device name"), ("meta", "transfer.predict runs on cpu, cuda or mps")):
        with pytest.raises(SystemExit, match=f"--device {name}: {why}"):
            predict([str(seg_run), "-i", scan, "-o", str(tmp_path / "x"), "--device", name])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: PyTorch sees no cuda device"):
            predict([str(seg_run), "-i", scan, "-o", str(tmp_path / "x"), "--device", "cuda"])
        assert not (tmp_path / "x").exists()
        return
    n = torch.cuda.device_count()
    with pytest.raises(SystemExit, match=f"--device cuda:{n}: this machine has {n} CUDA"):
        predict([str(seg_run), "-i", scan, "-o", str(tmp_path / "x"), "--device", f"cuda:{n}"])
    assert predict([str(seg_run), "-i", scan, "-o", str(tmp_path / "gpu"), "--device", "cuda",
                    "--save-probabilities"]) == 0
    gpu = np.asarray(nib.load(tmp_path / "gpu" / "lps_prob.nii.gz").dataobj)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)  # cuDNN convolutions run in TF32 by default (H200: 1.8e-4 off)
    masks = [np.asarray(nib.load(tmp_path / d / "lps.nii.gz").dataobj) for d in ("cpu", "gpu")]
    assert (masks[0] != masks[1]).sum() <= (np.abs(cpu - 0.5) < 1e-3).sum()  # only voxels at the threshold may differ


# ------------------------------------------------------------------------------------------- audio, images
MOE = ["experiment=moelora_toy", "variants=null", "sweep=null", "data.n_train=12", "data.n_dev=8", "data.n_eval=6",
       "data.n_ood=8", "data.batch_size=8", "model.pretext.clips=16", "model.pretext.steps=2", "trainer.max_steps=3",
       "callbacks=plain", "model.mode=lora", "selection=dev_eer", "trainer.limit_val_batches=1.0",
       "trainer.max_steps=-1", "trainer.max_epochs=1"]


def test_audio_scores_decide_at_the_runs_dev_threshold(tmp_path):
    run(compose_config([*MOE, f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "run", tmp_path / "cache"))
    GlobalHydra.instance().clear()
    from transfer.records import read_jsonl

    val = [r for r in read_jsonl(tmp_path / "run" / "results.jsonl") if r["split"] == "val"]
    threshold = val[0]["metrics"]["eer_threshold"]
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(1)
    sf.write(clips / "a.flac", rng.normal(0, 0.1, 16000).astype(np.float32), 16000)  # another rate: resampled
    sf.write(clips / "b.wav", rng.normal(0, 0.1, 2000).astype(np.float32), 8000)  # short: repeated
    (clips / "c.flac").write_bytes(b"garbage")
    assert predict([str(tmp_path / "run"), "-i", str(clips), "-o", str(tmp_path / "out")]) == 1
    rows = _rows(tmp_path / "out" / "scores.csv")
    assert [Path(r["file"]).name for r in rows] == ["a.flac", "b.wav"]
    for r in rows:
        assert r["decision"] == ("bonafide" if float(r["score"]) > threshold else "spoof")
    assert predict([str(tmp_path / "run"), "-i", str(clips / "a.flac"), "-o", str(tmp_path / "o2"),
                    "--threshold", "1e9"]) == 0
    assert _rows(tmp_path / "o2" / "scores.csv")[0]["decision"] == "spoof"
    # read as evaluation reads: the run's own eval-set scores, clip by clip
    flac = sorted((tmp_path / "cache").glob("synthetic_spoof-*/eval/flac"))[0]
    assert predict([str(tmp_path / "run"), "-i", str(flac), "-o", str(tmp_path / "eval")]) == 0
    ours = {Path(r["file"]).stem: float(r["score"]) for r in _rows(tmp_path / "eval" / "scores.csv")}
    theirs = dict(line.split() for line in (tmp_path / "run" / "scores_eval.txt").read_text().splitlines())
    assert ours.keys() == theirs.keys()
    assert all(abs(ours[k] - float(v)) < 2e-6 for k, v in theirs.items())


def test_images_get_the_runs_class_names(tmp_path):
    run(compose_config(["experiment=source_only_toy", *TINY], tmp_path / "run", tmp_path / "cache"))
    GlobalHydra.instance().clear()
    import json

    classes = json.loads((tmp_path / "run" / "data_summary.json").read_text())["classes"]
    from PIL import Image

    pics = tmp_path / "pics"
    pics.mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(pics / "x.png")
    Image.fromarray(np.full((12, 12), 50, np.uint8), mode="L").save(pics / "gray.jpg")
    assert predict([str(tmp_path / "run"), "-i", str(pics), "-o", str(tmp_path / "out")]) == 0
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 2 and all(r["class"] in classes and 0 < float(r["probability"]) <= 1 for r in rows)
    # read as evaluation reads: predict's labels on a target domain give the run's own test accuracy there
    from transfer.records import read_jsonl

    sketch = sorted((tmp_path / "cache").glob("synthetic_domains-*/sketch"))[0]
    assert predict([str(tmp_path / "run"), "-i", str(sketch), "-o", str(tmp_path / "sketch")]) == 0
    rows = _rows(tmp_path / "sketch" / "predictions.csv")
    acc = np.mean([r["class"] == Path(r["file"]).parent.name for r in rows])
    test = [r for r in read_jsonl(tmp_path / "run" / "results.jsonl") if r["split"] == "test" and r["target"] == "sketch"]
    assert acc == pytest.approx(test[0]["metrics"]["acc"], abs=1e-6)


def test_landa_labels_images_through_its_clip(tmp_path):
    from test_landa import TINY as LANDA

    run(compose_config([*LANDA, "variants=null", "model.method=landa"], tmp_path / "run", tmp_path / "cache"))
    GlobalHydra.instance().clear()
    from transfer.records import read_jsonl

    targets = sorted((tmp_path / "cache").glob("synthetic_domains-*/infrared"))
    assert targets, "the toy's generated target domain"
    assert predict([str(tmp_path / "run"), "-i", str(targets[0]), "-o", str(tmp_path / "out")]) == 0
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert len(rows) == sum(1 for _ in targets[0].rglob("*.png")) > 0
    # the run's own test accuracy on these images, from predict's labels (class folder = true class)
    acc = np.mean([r["class"] == Path(r["file"]).parent.name for r in rows])
    row = [r for r in read_jsonl(tmp_path / "run" / "results.jsonl") if r["split"] == "test" and r["target"] == "infrared"]
    assert acc == pytest.approx(row[0]["metrics"]["acc"], abs=1e-6)


def test_sfda_labels_images_with_its_adapted_model(tmp_path):
    from test_sfda import TINY as SFDA

    run(compose_config([*SFDA, "variants=null", "scenarios=null", "sweep=null", "model.strategy=ft"],
                       tmp_path / "run", tmp_path / "cache"))
    GlobalHydra.instance().clear()
    from transfer.records import read_jsonl

    test = [r for r in read_jsonl(tmp_path / "run" / "results.jsonl") if r["split"] == "test"]
    target = test[0]["target"]
    folder = sorted((tmp_path / "cache").glob(f"synthetic_domains-*/{target}"))[0]
    assert predict([str(tmp_path / "run"), "-i", str(folder), "-o", str(tmp_path / "out")]) == 0
    rows = _rows(tmp_path / "out" / "predictions.csv")
    classes = {r["class"] for r in rows}
    assert rows and classes <= set(__import__("json").loads((tmp_path / "run" / "data_summary.json").read_text())["classes"])
