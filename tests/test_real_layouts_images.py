"""Image-classification datasets laid out as their public releases ship them (TLlib lists, the official DomainNet
and PACS split files, Dassl's splits/): class names follow the lists, official splits are used as such."""

from pathlib import Path

import pytest

import real_fixtures as rf
from datamodules import DatasetError, DomainDataModule
from datamodules.fewshot import FewShotTargetDataModule


TLLIB_OFFICEHOME = rf.TLLIB_OFFICEHOME


@pytest.fixture
def officehome_tllib(tmp_path) -> Path:
    root = rf.office_home_tllib(tmp_path, domains=("Art", "Clipart"))
    for cls in TLLIB_OFFICEHOME:  # the original release's folder name, read as an ImageFolder
        rf.img(root / "Real World" / cls / "00001.jpg")
    return root


def _write_list(root: Path, rel: str, lines: list[str]) -> None:
    rf.write(root / rel, "\n".join(lines) + "\n")


def test_officehome_class_names_follow_the_tllib_lists(officehome_tllib):
    dm = DomainDataModule(str(officehome_tllib), "office_home", sources=["Art"], targets=["Clipart", "Real_World"],
                          image_size=8, val_ratio=0.2)
    dm.setup()
    for cls, label in TLLIB_OFFICEHOME.items():
        assert dm.classes[label] == cls
    assert len(dm.classes) == 65 and dm.classes[1] == "Exit_Sign"  # the other names: TLlib's documented order
    # an ImageFolder domain beside list files gets the lists' labels, not alphabetical ones
    real = {p.parent.name: y for p, y in dm.target_test["Real_World"].samples}
    assert real == TLLIB_OFFICEHOME
    summary = dm.data_summary()
    assert summary["classes"][33] == "Alarm_Clock" and summary["splits"]["test"]["Clipart"] == 15
    assert summary["official"]["Art"] == {"expected": 2427, "found": 15}


def test_list_giving_one_label_two_class_folders_is_refused(officehome_tllib):
    _write_list(officehome_tllib, "image_list/Clipart.txt", ["Clipart/Drill/00000.jpg 0", "Clipart/TV/00000.jpg 0"])
    dm = DomainDataModule(str(officehome_tllib), "office_home", sources=["Art"], targets=["Clipart"], val_ratio=0.2)
    with pytest.raises(DatasetError, match=r"Clipart\.txt:2: label 0 is class folder 'TV'.*'Drill'"):
        dm.setup()
    _write_list(officehome_tllib, "image_list/Clipart.txt", ["Clipart/Drill/00000.jpg 0", "Clipart/Drill/00001.jpg 5"])
    dm = DomainDataModule(str(officehome_tllib), "office_home", sources=["Art"], targets=["Clipart"], val_ratio=0.2)
    with pytest.raises(DatasetError, match=r"class folder 'Drill' has label 5.*label 0"):
        dm.setup()


def test_missing_listed_image_is_reported_at_setup(officehome_tllib):
    (officehome_tllib / "Clipart" / "TV" / "00003.jpg").unlink()
    dm = DomainDataModule(str(officehome_tllib), "office_home", sources=["Art"], targets=["Clipart"], val_ratio=0.2)
    with pytest.raises(DatasetError, match=r"1 image file\(s\) listed in .*Clipart\.txt missing: .*TV/00003\.jpg"):
        dm.setup()


def test_source_too_small_for_val_ratio_says_so(officehome_tllib):
    dm = DomainDataModule(str(officehome_tllib), "office_home", sources=["Art"], targets=["Clipart"], val_ratio=0.05)
    with pytest.raises(DatasetError, match=r"'Art'.*val_ratio=0\.05 rounds to no validation image"):
        dm.setup()


DOMAINNET = rf.DOMAINNET


def _domainnet(root: Path, prefix: str) -> Path:
    return rf.domainnet(root.parent, prefix, domains=("clipart", "sketch"))


@pytest.mark.parametrize("prefix,layout", [("", "official"), ("image_list/", "TLlib"), ("splits/", "Dassl")])
def test_domainnet_uses_the_official_split_in_every_layout(tmp_path, prefix, layout):
    root = _domainnet(tmp_path / "domainnet", prefix)
    dm = DomainDataModule(str(root), "domainnet", sources=["clipart"], targets=["sketch"], val_ratio=0.25)
    dm.setup()
    assert {dm.classes[v]: v for v in DOMAINNET.values()} == DOMAINNET
    test_files = {p.name for p, _ in dm.target_test["sketch"].samples}
    assert test_files == {f"sketch_{i:03d}.jpg" for i in (4, 5)} and len(dm.target_test["sketch"]) == 6
    train_files = {p.name for ds in (dm.source_train[0], dm.source_val[0]) for p, _ in ds.samples}
    assert train_files == {f"clipart_{i:03d}.jpg" for i in range(4)}  # never the official test images
    assert layout in dm.data_summary()["layout"]


def test_domainnet_without_lists_refuses_to_fall_back_silently(tmp_path):
    root = _domainnet(tmp_path / "domainnet", "elsewhere/")
    dm = DomainDataModule(str(root), "domainnet", sources=["clipart"], targets=["sketch"], val_ratio=0.25)
    with pytest.raises(DatasetError, match=r"no list file for domain 'clipart'.*official split lists.*layout=imagefolder"):
        dm.setup()
    dm = DomainDataModule(str(root), "domainnet", sources=["clipart"], targets=["sketch"], val_ratio=0.25,
                          layout="imagefolder")
    dm.setup()
    assert len(dm.target_test["sketch"]) == 18 and dm.classes[0] == "The_Eiffel_Tower"  # sorted folders, told so
    assert any("not the official domainnet split" in n for n in dm.data_summary()["notes"])


PACS = rf.PACS


def _pacs(root: Path, image_dir: str, list_dir: str, with_test: bool) -> Path:
    return rf.pacs(root.parent, image_dir, list_dir, with_test)


@pytest.mark.parametrize("image_dir,list_dir,with_test", [("kfold", "", True), ("images", "splits/", False)])
def test_pacs_official_and_dassl_layouts_use_train_crossval_test(tmp_path, image_dir, list_dir, with_test):
    root = _pacs(tmp_path / "pacs", image_dir, list_dir, with_test)
    dm = DomainDataModule(str(root), "pacs", sources=["photo"], targets=["sketch"])
    dm.setup()
    assert dm.classes == PACS
    assert len(dm.source_train[0]) == 28 and len(dm.source_val[0]) == 7  # the official crossval list, not a re-split
    assert {p.stem.rsplit("_", 1)[1] for p, _ in dm.source_val[0].samples} == {"4"}
    assert len(dm.target_test["sketch"]) == 35  # the whole target domain (test_kfold, or train + crossval)
    assert all(p.parent.name == PACS[y] for p, y in dm.target_test["sketch"].samples)
    summary = dm.data_summary()
    assert summary["official"]["photo"] == {"expected": 1670, "found": 35}


def test_pacs_known_corrupt_file_is_skipped_and_counted(tmp_path):
    root = _pacs(tmp_path / "pacs", "images", "splits/", False)
    bad = "sketch/dog/n02103406_4068-1.png"
    (root / "images" / bad).write_bytes(b"not a png")
    f = root / "splits" / "sketch_train_kfold.txt"
    f.write_text(f.read_text() + f"{bad} 1\n")
    dm = DomainDataModule(str(root), "pacs", sources=["photo"], targets=["sketch"])
    dm.setup()
    assert len(dm.target_test["sketch"]) == 35
    assert dm.data_summary()["dropped"] == {"known corrupt file of the release": 1}


def test_rsut_label_shift_list_must_agree_with_class_names(tmp_path, officehome_tllib):
    _write_list(officehome_tllib, "Clipart_UT.txt", ["Clipart/Drill/00000.jpg 0", "Clipart/TV/00000.jpg 33"])
    domains = DomainDataModule(str(officehome_tllib), "office_home", targets=["Clipart"])
    fs = FewShotTargetDataModule(domains, "Clipart", shots=1, scenario="label_shift",
                                 label_shift_list="{domain}_UT.txt")
    with pytest.raises(DatasetError, match=r"Clipart_UT\.txt:2: label 33 is class folder 'TV' here, but Alarm_Clock"):
        fs.setup()
