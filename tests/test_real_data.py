"""Detection, audio and CT readers on the releases' own layouts and odd cases; pretrained models that must not start
random; the clinical report on single-fold runs. Fixtures: ``tests/real_fixtures.py``."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules import DatasetError, PairedDetectionDataModule
from datamodules.audio import SpoofDataModule, load_audio, read_asvspoof2021_keys
from datamodules.volumes import VolumeDataModule, load_datalist, read_folds
import real_fixtures as rf
from conftest import cli
from transfer.folds import main as folds_main
from transfer.metrics.clinical import CaseResult, cases_to_csv
from transfer.models.unets import create_segmentation_net, forward_any_size
from transfer.report import build_report
from transfer.weights import WeightsError
from transfer.statedict import StateDictMismatchError

FLIR_MAP = {"person": 1, "bicycle": 2, "car": 3}


# ------------------------------------------------------------------------------------------------ detection
def test_flir_zero_area_and_stray_boxes_are_dropped_and_counted(tmp_path):
    root = rf.flir_aligned(tmp_path)
    dm = PairedDetectionDataModule(str(root), "flir_aligned", FLIR_MAP, val_ratio=0.2)
    dm.setup()
    s = dm.data_summary()
    assert s["dropped"]["boxes without area (xmax <= xmin or ymax <= ymin)"] == 2
    first = next(it for it in dm.test_set.items if it.id == "FLIR_08863")
    assert first.ann.labels.tolist() == [1, 3]  # dog and the zero-width bicycle gone, nothing else


def test_empty_flir_split_is_an_error_naming_the_file(tmp_path):
    root = rf.flir_aligned(tmp_path)
    (root / "align_validation.txt").write_text("\n")
    dm = PairedDetectionDataModule(str(root), "flir_aligned", FLIR_MAP)
    with pytest.raises(DatasetError, match=r"align_validation\.txt: the test split of flir_aligned is empty"):
        dm.setup()


def test_llvip_orphan_annotation_is_counted_or_strict(tmp_path):
    root = rf.llvip(tmp_path)
    dm = PairedDetectionDataModule(str(root), "llvip", {"person": 1})
    dm.setup()
    assert dm.data_summary()["dropped"]["annotation files without an image"] == 1
    with pytest.raises(DatasetError, match=r"999999\.xml: annotation has no image.*strict"):
        PairedDetectionDataModule(str(root), "llvip", {"person": 1}, strict=True).setup()


def test_voc_difficult_boxes_are_ignored_in_matching_not_trained_on(tmp_path):
    root = rf.llvip(tmp_path)
    dm = PairedDetectionDataModule(str(root), "llvip", {"person": 1}, val_ratio=0.2)
    dm.setup()
    test = {it.id: i for i, it in enumerate(dm.test_set.items)}
    hard = dm.test_set[test["190003"]]["target"]  # k == 2 in its split: marked difficult
    assert hard["iscrowd"].tolist() == [1] and len(hard["boxes"]) == 1
    from datamodules.detection import PairedDetectionDataset
    train_view = PairedDetectionDataset(dm.test_set.items, difficult="ignore", evaluation=False)
    assert len(train_view[test["190003"]]["target"]["boxes"]) == 0
    # COCO-style matching ignores the difficult box: a detector that misses it is not penalised
    from torchmetrics.detection import MeanAveragePrecision
    m = MeanAveragePrecision(box_format="xyxy", backend="faster_coco_eval")
    easy = dm.test_set[test["190001"]]["target"]
    m.update([{"boxes": easy["boxes"], "scores": torch.tensor([0.9]), "labels": easy["labels"]},
              {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}],
             [easy, hard])
    assert float(m.compute()["map_50"]) == pytest.approx(1.0)
    s = dm.data_summary()
    assert s["splits"]["test"]["frames_without_objects"] == 1


# ------------------------------------------------------------------------------------------------ audio
def _spoof_module(data):
    la = data / "LA"
    proto = la / "ASVspoof2019_LA_cm_protocols"
    return SpoofDataModule(
        train={"format": "asvspoof2019", "protocol": str(proto / "ASVspoof2019.LA.cm.train.trn.txt"),
               "audio_dir": str(la / "ASVspoof2019_LA_train" / "flac")},
        dev={"format": "asvspoof2019", "protocol": str(proto / "ASVspoof2019.LA.cm.dev.trl.txt"),
             "audio_dir": str(la / "ASVspoof2019_LA_dev" / "flac")},
        tests={"df2021": {"format": "asvspoof2021", "root": str(data / "ASVspoof2021"), "track": "DF"},
               "in_the_wild": {"format": "in_the_wild", "root": str(data / "release_in_the_wild")}},
        length=4000)


def test_missing_flac_is_reported_at_setup_as_missing(tmp_path):
    data = rf.asvspoof(tmp_path)
    (data / "LA" / "ASVspoof2019_LA_dev" / "flac" / "LA_D_1000001.flac").unlink()
    with pytest.raises(DatasetError, match=r"1 audio file\(s\) listed in .*dev\.trl\.txt missing: .*LA_D_1000001\.flac"):
        _spoof_module(data).setup()


def test_asvspoof2021_full_key_release_is_found_and_df_parts_resolved(tmp_path):
    data = rf.asvspoof(tmp_path)
    dm = _spoof_module(data)
    dm.setup()
    df = dm.test_sets["df2021"].items
    assert [(i.utt, i.label) for i in df] == [("DF_E_2000011", 0), ("DF_E_2000050", 1)]
    assert "part01" in str(df[1].path)  # the second eval archive's folder
    bad = data / "ASVspoof2021" / "keys" / "LA" / "CM" / "trial_metadata.txt"
    bad.write_text("LA_0009 LA_E_9332881 alaw A07 spoof notrim eval\n")  # a column short
    with pytest.raises(DatasetError, match=r"trial_metadata\.txt:1: expected 8 \(LA\) or 13 \(DF\) columns"):
        read_asvspoof2021_keys(root=data / "ASVspoof2021", track="LA")


def test_in_the_wild_44k_wav_is_resampled(tmp_path):
    data = rf.asvspoof(tmp_path)
    wav = load_audio(data / "release_in_the_wild" / "0.wav", 16000)
    assert wav.shape[0] == 4000  # 0.25 s at 44.1 kHz -> 16 kHz


# ------------------------------------------------------------------------------------------------ volumes
@pytest.mark.parametrize("net", [{"name": "unet", "channels": [4, 8, 16], "strides": [2, 2]},
                                 {"name": "mv", "width": 4, "level": 2}])
def test_whole_volume_inference_on_odd_sizes(net):
    model = create_segmentation_net(**net).eval()
    for shape in ((47, 49, 11), (32, 32, 26), (40, 36, 33)):
        x = torch.randn(1, 1, *shape)
        with torch.no_grad():
            y = forward_any_size(model, x)
        assert y.shape == x.shape
    if net["name"] == "unet":
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 1, 47, 49, 11))  # what the bare network does on such a volume


def test_sah_module_scores_odd_lps_volumes_case_by_case(tmp_path):
    from transfer.methods.sah.module import SegmentationModule

    root = rf.sah_datalist(tmp_path)
    folds_main(["make", str(root / "datalist.json"), "--k", "3", "--seed", "0", "--out", str(root / "folds.json")])
    dm = VolumeDataModule(str(root / "datalist.json"), str(root / "folds.json"), fold=0, roi=[32, 32, 8])
    dm.setup()
    module = SegmentationModule(net={"name": "unet", "channels": [4, 8, 16], "strides": [2, 2]}).eval()
    for i in range(len(dm.test_set)):
        item = dm.test_set[i]
        prob = module._probabilities(item["image"][None])
        assert prob.shape[2:] == item["label"].shape[1:]


def test_fold_file_of_another_datalist_or_splitting_a_patient_is_refused(tmp_path):
    root = rf.sah_datalist(tmp_path)
    datalist, folds = root / "datalist.json", root / "folds.json"
    folds_main(["make", str(datalist), "--k", "3", "--seed", "0", "--out", str(folds)])
    cases = load_datalist(datalist)
    read_folds(folds, cases, datalist)  # the file made from this datalist is fine
    doc = json.loads(folds.read_text())
    doc["folds"]["sah_000_1"] = (doc["folds"]["sah_000_0"] + 1) % 3  # two scans of patient_000 in two folds
    folds.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"patient 'patient_000' is split across folds"):
        read_folds(folds, cases)
    data = json.loads(datalist.read_text())
    data["training"] = data["training"][:-1]
    datalist.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"made from another datalist"):
        read_folds(folds, load_datalist(datalist), datalist)


def test_datalist_without_patient_ids_is_flagged(tmp_path):
    from datamodules.summary import DataSummary

    root = rf.sah_datalist(tmp_path, patient_ids=False)
    summary = DataSummary()
    load_datalist(root / "datalist.json", summary=summary)
    assert "12 of 12 cases have no 'patient_id'" in summary.notes[0] and "Add \"patient_id\"" in summary.notes[0]


def test_corrupt_nifti_names_the_case_and_keeps_its_cause(tmp_path):
    root = rf.sah_datalist(tmp_path)
    folds_main(["make", str(root / "datalist.json"), "--k", "3", "--seed", "0", "--out", str(root / "folds.json")])
    vol = root / "imagesTr" / "sah_001_0.nii.gz"
    data = vol.read_bytes()
    vol.write_bytes(data[: len(data) // 2])  # header intact, data truncated: a broken download
    dm = VolumeDataModule(str(root / "datalist.json"), str(root / "folds.json"), fold=0, roi=[32, 32, 8])
    with pytest.raises(DatasetError, match=r"case sah_001_0: cannot read its volumes") as err:
        dm.setup()
    assert isinstance(err.value.__cause__, (EOFError, OSError, ValueError)) and "Error" in str(err.value)


# ------------------------------------------------------------------------------------------------ weights
def test_pretrained_backbone_without_weights_refuses_and_random_is_recorded():
    from transfer.models.wav2vec2 import create_wav2vec2

    with pytest.raises(WeightsError, match=r"'xlsr_300m' is a pretrained model but no weights.*'random'"):
        create_wav2vec2("xlsr_300m", None)
    assert getattr(create_wav2vec2("base", "random"), "random_init", False)
    from transfer.models.detectors import create_detector
    with pytest.raises(WeightsError, match=r"detector 'fcos' is a pretrained model"):
        create_detector("fcos", None)


def test_moelora_asvspoof_as_shipped_stops_on_missing_weights(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("experiment=moelora_asvspoof")
    with pytest.raises(Exception, match="wav2vec2_xlsr_300m.s3prl.*place the file at"):
        instantiate(cfg.model, _convert_="all")
    with pytest.raises(Exception, match="'xlsr_300m' is a pretrained model but no weights"):
        instantiate(make_cfg("experiment=moelora_asvspoof", "model.weights=null").model, _convert_="all")


def test_backbone_file_missing_body_tensors_names_them(tmp_path):
    import timm
    from safetensors.torch import save_file

    from transfer.models.backbones import load_pretrained

    state = timm.create_model("resnet18", num_classes=1000).state_dict()
    save_file(state, tmp_path / "full.safetensors")
    assert load_pretrained(timm.create_model("resnet18", num_classes=7), str(tmp_path / "full.safetensors")) == \
        ["fc.weight", "fc.bias"]  # the head of another size: re-initialised, as intended
    state.pop("layer1.0.conv1.weight")
    state.pop("layer1.0.bn1.weight")
    save_file(state, tmp_path / "cut.safetensors")
    with pytest.raises(StateDictMismatchError, match=r"2 missing tensors outside the classifier head \['layer1\.0\.conv1\.weight'"):
        load_pretrained(timm.create_model("resnet18", num_classes=7), str(tmp_path / "cut.safetensors"))


def test_eval_without_checkpoint_refuses(tmp_path):
    res = cli("transfer.eval", "experiment=source_only_toy", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode != 0 and "needs ckpt_path=PATH" in res.stderr
    assert not (tmp_path / "run" / "results.jsonl").exists()


# ------------------------------------------------------------------------------------------------ report
def _run(folder, experiment, variant, cases, trainable):
    folder.mkdir(parents=True)
    (folder / "config_resolved.yaml").write_text(f"experiment_name: {experiment}\nvariant: {variant or 'null'}\n")
    (folder / "per_case.csv").write_text(cases_to_csv(cases))
    row = {"experiment": experiment, "variant": variant, "split": "test", "metrics": {"trainable_params": trainable}}
    (folder / "results.jsonl").write_text(json.dumps(row) + "\n")


def test_report_on_single_fold_runs_names_methods_and_trainable(tmp_path, capsys):
    cases = [CaseResult(f"c{i}", 1, 0.5 + 0.1 * i, 0.5, 3.0, False, 10.0 * (i + 1), 9.0 * (i + 1), "0-25 mL")
             for i in range(3)]
    _run(tmp_path / "outputs" / "sah_convlora" / "2026-11-30_10-00-00", "sah_convlora", None, cases, 14628)
    _run(tmp_path / "outputs" / "sah_full" / "2026-11-30_10-05-00", "sah_full", None, cases[:2], 34371)
    md = build_report([tmp_path / "outputs" / "sah_convlora" / "2026-11-30_10-00-00"], tmp_path / "alone")
    assert "| sah_convlora | 3 | 14,628 |" in md  # a single-fold run alone
    md = build_report([tmp_path / "outputs"], tmp_path / "both")
    assert "| sah_convlora | 3 | 14,628 |" in md and "| sah_full | 2 | 34,371 |" in md
    assert "2026-11-30" not in md
    from transfer.report import main as report_main

    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "missing")])
    assert "missing: run folder does not exist" in capsys.readouterr().err


def test_nifti_fixture_is_lps_and_odd_sized(tmp_path):
    root = rf.sah_datalist(tmp_path)
    img = nib.load(root / "imagesTr" / "sah_000_0.nii.gz")
    assert img.shape == (47, 49, 11) and np.sign(np.diag(img.affine)[:3]).tolist() == [-1, -1, 1]
