"""``python -m transfer.data check`` on every real experiment family (tiny copies of the releases' layouts) and
on the toys: the layout found, counts, class order, drops and official counts, with no model or weights."""

import json
import sys

import pytest

import real_fixtures as rf
from conftest import cli, compose_config
from transfer.data import check
from transfer.folds import main as folds_main


def _check(tmp_path, experiment, data_dir, *overrides):
    cfg = compose_config([f"experiment={experiment}", f"paths.data_dir={data_dir}", *overrides],
                         tmp_path / "run", tmp_path / "cache")
    summary = check(cfg, tmp_path / "run" / "data_summary.json")
    assert json.loads((tmp_path / "run" / "data_summary.json").read_text())["splits"] == summary["splits"]
    return summary


@pytest.mark.parametrize("experiment", ["source_only_office_home", "sfda_source_office_home_Art",
                                        "sfda_office_home_Art_Clipart", "landa_office_home_Clipart"])
def test_officehome_families(tmp_path, experiment):
    data = tmp_path / "data"
    rf.office_home_tllib(data)
    if experiment.startswith("sfda_office"):  # the few-shot protocol needs every class in the target domain
        from datamodules.catalogue import OFFICEHOME_TLLIB_ORDER
        rf.office_home_tllib(data, classes={c: i for i, c in enumerate(OFFICEHOME_TLLIB_ORDER)}, domains=["Clipart"])
    overrides = {"sfda_office_home_Art_Clipart": [], "landa_office_home_Clipart": ["data.domains.val_ratio=0.2"]}
    s = _check(tmp_path, experiment, data, *overrides.get(experiment, ["data.val_ratio=0.2"]))
    assert s["classes"][0] == "Drill" and s["classes"][33] == "Alarm_Clock" and s["classes"][56] == "TV"
    assert s["layout"].startswith("TLlib image_list")
    assert s["official"]  # compared with the release's per-domain counts (an incomplete copy shows)
    assert all(v["expected"] in (2427, 4365, 4439, 4357) for v in s["official"].values())


def test_pacs_and_domainnet_landa_families(tmp_path):
    data = tmp_path / "data"
    rf.pacs(data)
    s = _check(tmp_path, "landa_pacs_sketch", data)
    assert s["classes"] == list(rf.PACS) and "kfold" in s["layout"]
    assert s["splits"]["val"]["photo"] == 7 and s["splits"]["test"]["sketch"] == 35  # official crossval / test lists
    rf.domainnet(data)
    s = _check(tmp_path, "landa_domainnet_clipart", data)
    assert s["classes"][300] == "The_Eiffel_Tower" and "DomainNet official" in s["layout"]
    assert s["splits"]["test"]["clipart"] == 6  # the official test list, not the whole domain


def test_modtr_flir_and_llvip(tmp_path):
    data = tmp_path / "data"
    rf.flir_aligned(data)
    s = _check(tmp_path, "modtr_flir", data)
    assert s["dropped"]["boxes of classes outside class_map (or COCO crowd regions)"] == 2  # one per split
    assert s["dropped"]["boxes without area (xmax <= xmin or ymax <= ymin)"] == 2
    assert s["official"]["train pairs"] == {"expected": 4129, "found": 10}
    assert s["splits"]["test"]["pairs"] == 4
    rf.llvip(data)
    s = _check(tmp_path, "modtr_llvip", data)
    assert s["dropped"]["annotation files without an image"] == 1
    assert s["official"]["test pairs"] == {"expected": 3463, "found": 4}
    assert sum(s["splits"][k]["frames_without_objects"] for k in ("train", "val", "test")) == 2


def test_sah_family_reads_fold_file_and_patients(tmp_path):
    data = tmp_path / "data"
    root = rf.sah_datalist(data)
    assert folds_main(["make", str(root / "datalist.json"), "--k", "3", "--seed", "0", "--out", str(root / "folds.json")]) == 0
    s = _check(tmp_path, "sah_convlora", data)
    assert s["splits"]["folds"] == {"fold_0": 4, "fold_1": 4, "fold_2": 4}
    assert s["splits"]["test"] == {"cases": 4, "patients": 2}


def test_moelora_asvspoof_family(tmp_path):
    data = tmp_path / "data"
    rf.asvspoof(data)
    s = _check(tmp_path, "moelora_asvspoof", data)
    assert s["splits"]["train"] == {"bonafide": 2, "spoof": 2}
    assert s["splits"]["la2021"] == {"bonafide": 1, "spoof": 1}  # eval phase only
    assert s["splits"]["df2021"] == {"bonafide": 1, "spoof": 1} and s["splits"]["df2021/attacks"] == {"A15": 1}
    assert s["splits"]["in_the_wild"] == {"bonafide": 2, "spoof": 1}
    assert s["official"]["train"] == {"expected": 25380, "found": 4}


def test_check_cli_on_a_toy_prints_and_writes(tmp_path, monkeypatch):
    res = cli("transfer.data", "check", "experiment=source_only_toy", "data.per_class=4", "data.size=8",
              "data.val_ratio=0.25", f"paths.cache_dir={tmp_path / 'cache'}", "--out", "summary.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "train                  photo=15, painting=15" in res.stdout and "0:circle" in res.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["classes"][0] == "circle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "summary.json"]  # no run folder
    from transfer.data import main

    monkeypatch.setattr(sys, "argv", ["transfer.data", "experiment=source_only_toy"])
    with pytest.raises(SystemExit, match="usage: python -m transfer.data check"):
        main()


@pytest.mark.parametrize("toy", ["source_only_toy", "sfda_toy", "landa_toy", "modtr_toy", "sah_toy", "moelora_toy"])
def test_check_every_toy(tmp_path, cache_dir, toy):
    small = {"moelora_toy": ["data.n_train=8", "data.n_dev=4", "data.n_eval=4", "data.n_ood=8"],  # clips written here
             "source_only_toy": ["data.per_class=8"]}
    cfg = compose_config([f"experiment={toy}", *small.get(toy, [])], tmp_path / "run", cache_dir)
    s = check(cfg)
    assert s["splits"] and not s.get("official")  # generated data is never compared with a release's counts
