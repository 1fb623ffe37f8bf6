"""Before a run makes anything: every missing weights file, dataset path and required setting named in one message,
exit code 2, no traceback, no run folder; expected errors found later end without a traceback too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config
from transfer.preflight import fetch_requested, format_missing, layout_tree, missing_assets


def _cli(module: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "OMP_NUM_THREADS": "1",
           "TRANSFER_WEIGHTS_DIR": str(cwd / "no_weights"), **env}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_two_missing_weights_and_a_dataset_root_fail_once_naming_all_three(tmp_path):
    res = _cli("transfer.train", "experiment=modtr_flir", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr
    assert "modtr_flir cannot start: 3 things missing" in err
    assert "fcos_resnet50_fpn.coco (model.detector.weights)" in err and "resnet34.tv_in1k (model.translator.pretrained)" in err
    assert f"{tmp_path / 'data' / 'FLIR_aligned'} (data.root): does not exist" in err
    assert "python -m transfer.weights fetch --experiment modtr_flir" in err
    assert "JPEGImages/FLIR_00002_RGB.jpg" in err  # the expected layout, from datamodules/README.md
    assert "Traceback" not in err + res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no outputs/


def test_a_command_stopped_by_the_preflight_imports_neither_torch_nor_lightning(tmp_path, monkeypatch):
    """It answers in about 2 s instead of 10: the trainer schema comes from a per-Lightning-version cache."""
    from transfer import schemas

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert schemas.trainer_fields() == schemas.trainer_fields_from_lightning()  # writes the cache
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "transfer.train", "experiment=modtr_flir",
                          f"paths.data_dir={tmp_path / 'data'}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TRANSFER_WEIGHTS_DIR": str(tmp_path / "no_weights")})
    assert res.returncode == 2 and "3 things missing" in res.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not imported & {"torch", "lightning", "torchvision", "monai"}


def test_a_multirun_and_eval_stop_the_same_way(tmp_path):
    res = _cli("transfer.train", "-m", "experiment=modtr_flir", "seed=0,1", f"paths.data_dir={tmp_path / 'd'}",
               cwd=tmp_path)
    assert res.returncode == 2 and "3 things missing" in res.stderr and "Traceback" not in res.stderr
    res = _cli("transfer.eval", "experiment=sfda_toy", cwd=tmp_path)
    assert res.returncode == 2 and "transfer.eval needs ckpt_path=PATH" in res.stderr
    res = _cli("transfer.eval", "experiment=sfda_toy", f"ckpt_path={tmp_path / 'x.ckpt'}", cwd=tmp_path)
    assert res.returncode == 2 and f"{tmp_path / 'x.ckpt'}: no such file" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_full_error_shows_the_traceback(tmp_path):
    res = _cli("transfer.train", "experiment=modtr_flir", f"paths.data_dir={tmp_path / 'd'}", cwd=tmp_path,
               HYDRA_FULL_ERROR="1")
    assert res.returncode == 1 and "Traceback" in res.stderr and "MissingAssetsError" in res.stderr
    assert "fcos_resnet50_fpn.coco" in res.stderr


def test_an_error_found_at_setup_ends_with_its_message_and_no_traceback(tmp_path):
    (tmp_path / "data" / "LLVIP").mkdir(parents=True)  # the root is there, its contents are not
    res = _cli("transfer.data", "check", "experiment=modtr_llvip", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert res.returncode == 2 and "DatasetError" in res.stderr and "LLVIP" in res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_required_settings_and_fetchable_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_WEIGHTS_DIR", str(tmp_path / "w"))
    cfg = compose_config(["experiment=sah_full", f"paths.data_dir={tmp_path}"], tmp_path / "run", tmp_path / "c")
    found = {(m.kind, m.key) for m in missing_assets(cfg)}
    assert found == {("setting", "model.pretrained"), ("data", "data.datalist"), ("data", "data.folds_file")}
    cfg = compose_config(["experiment=modtr_flir", f"paths.data_dir={tmp_path}", "weights.fetch=true"],
                         tmp_path / "run", tmp_path / "c")
    assert fetch_requested(cfg)  # weights.fetch=true: the run downloads these two before it starts (prefetch)
    assert sorted(m.name for m in missing_assets(cfg) if m.kind == "weights") == ["fcos_resnet50_fpn.coco",
                                                                                  "resnet34.tv_in1k"]
    cfg = compose_config(["experiment=modtr_flir", f"paths.data_dir={tmp_path}", "detector=retinanet",
                          "model.translator.pretrained=/nowhere/encoder.safetensors"], tmp_path / "run", tmp_path / "c")
    missing = missing_assets(cfg)
    assert {m.value for m in missing if m.kind == "weights"} == {"retinanet_resnet50_fpn.coco",
                                                                  "/nowhere/encoder.safetensors"}
    text = format_missing(missing, "modtr_flir", ["experiment=modtr_flir", "detector=retinanet"])
    assert "fetch retinanet_resnet50_fpn.coco" in text  # overrides change the weights: the names, not --experiment
    assert "/nowhere/encoder.safetensors (model.translator.pretrained): no such file" in text


def test_toys_need_nothing(tmp_path):
    for toy in ("source_only_toy", "sfda_toy", "landa_toy", "modtr_toy", "sah_toy", "moelora_toy"):
        assert missing_assets(compose_config([f"experiment={toy}"], tmp_path / "run", tmp_path / "c")) == [], toy


def test_sfda_stage_two_says_to_train_the_source_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_SFDA_SOURCES", str(tmp_path / "sources"))
    cfg = compose_config(["experiment=sfda_office_home_Art_Clipart", f"paths.data_dir={tmp_path}"], tmp_path / "r",
                         tmp_path / "c")
    text = format_missing(missing_assets(cfg), "sfda_office_home_Art_Clipart", [])
    assert "train it first with python -m transfer.train experiment=sfda_source_office_home_Art" in text


@pytest.mark.parametrize("path,first", [("data/LA/ASVspoof2019_LA_cm_protocols/x.txt", "LA/"),
                                        ("/mnt/sah/datalist.json", "sah/"), ("data/office_home", "office_home/"),
                                        ("data/unknown_set", None)])
def test_layout_trees_come_from_the_datamodules_readme(path, first):
    tree = layout_tree(path)
    assert (tree[0].split()[0] if tree else None) == first


def test_predict_names_missing_weights_before_reading_anything(tmp_path, capsys):
    from test_predict import SAH
    from hydra.core.global_hydra import GlobalHydra

    from transfer.predict import main as predict
    from transfer.runner import run

    overrides = [o for o in SAH if not o.startswith("~variants")] + ["variants=null", "fold=0", "model.strategy=full",
                                                                      "model.pretrain=null"]
    run(compose_config(overrides, tmp_path / "run", tmp_path / "cache"))
    GlobalHydra.instance().clear()
    cfg_file = tmp_path / "run" / "config_resolved.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("pretrained: null", f"pretrained: {tmp_path / 'base.pt'}"))
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        predict([str(tmp_path / "run"), "-i", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "out")])
    assert e.value.code == 2 and not (tmp_path / "out").exists()
    assert f"{tmp_path / 'base.pt'} (model.pretrained): no such file" in capsys.readouterr().err


def test_old_experiment_names_still_run_under_the_new_name(tmp_path):
    from transfer.experiments import renamed_note

    cfg = compose_config(["experiment=source_only_officehome"], tmp_path / "run", tmp_path / "c")
    assert cfg.experiment_name == "source_only_office_home" and cfg.data.dataset == "office_home"
    assert "renamed experiment=source_only_office_home" in renamed_note(["experiment=source_only_officehome"])
    assert renamed_note(["experiment=source_only_office_home"]) is None
