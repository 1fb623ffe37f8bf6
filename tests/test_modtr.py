"""ModTr: readers in the real layouts, frozen detector, translator/fusions, training, service, CLI, DDP."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from datamodules import DatasetError, PairedDetectionDataModule, read_coco_json, read_voc_xml
from datamodules.synthetic import SyntheticRGBIRDataModule
from transfer.statedict import StateDictMismatchError
from transfer.methods.modtr import DetectionService, HistEqTranslator, ModTrModule, load_translator, save_translator
from transfer.models.detectors import TorchvisionDetector, create_detector
from transfer.models.translators import FUSIONS, create_translator, fuse
from transfer.records import read_jsonl
from transfer.runner import run

FLIR = {"person": 1, "bicycle": 2, "car": 3}


def _xml(path: Path, objects, size=(64, 48)) -> None:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
                    f"{objs}</annotation>")


def _img(path: Path, size=(64, 48), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)).save(path)


@pytest.fixture
def flir(tmp_path) -> Path:
    """FLIR-aligned layout: JPEGImages/*_PreviewData.jpeg + *_RGB.jpg, Annotations/*.xml, align_*.txt."""
    root = tmp_path / "FLIR_aligned"
    for split, ids in (("train", ["FLIR_00001", "FLIR_00002", "FLIR_00003", "FLIR_00004", "FLIR_00005"]),
                       ("validation", ["FLIR_09001"])):
        for i in ids:
            _img(root / "JPEGImages" / f"{i}_PreviewData.jpeg", mode="L")
            _img(root / "JPEGImages" / f"{i}_RGB.jpg")
            _xml(root / "Annotations" / f"{i}_PreviewData.xml",
                 [("person", (2, 3, 12, 40)), ("dog", (20, 20, 30, 30)), ("car", (30, 10, 70, 40))])
        (root / f"align_{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc_reader_maps_classes_drops_dog_and_clips(flir):
    ann = read_voc_xml(flir / "Annotations" / "FLIR_00001_PreviewData.xml", FLIR)
    assert ann.labels.tolist() == [1, 3] and ann.dropped == 1 and ann.clipped == 1
    assert ann.boxes[1].tolist() == [30, 10, 64, 40]  # xmax 70 clipped to the 64-px width


def test_flir_datamodule_split_and_items(flir, caplog):
    dm = PairedDetectionDataModule(str(flir), "flir_aligned", FLIR, val_ratio=0.2, split_seed=1, batch_size=2)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert "dropped: boxes of classes outside class_map" in caplog.text and "clipped" in caplog.text
    assert dm.data_summary()["dropped"]["boxes of classes outside class_map (or COCO crowd regions)"] == 6
    assert len(dm.train_set) == 4 and len(dm.val_set) == 1 and len(dm.test_set) == 1
    again = PairedDetectionDataModule(str(flir), "flir_aligned", FLIR, val_ratio=0.2, split_seed=1)
    again.setup()
    assert [i.id for i in again.val_set.items] == [i.id for i in dm.val_set.items]
    batch = next(iter(dm.train_dataloader()))
    assert batch["ir"].shape == (2, 1, 48, 64) and batch["rgb"].shape == (2, 3, 48, 64)
    assert batch["target"][0]["labels"].dtype == torch.int64


def test_coco_reader_and_test_loader_keeps_every_image(tmp_path):
    root = tmp_path / "coco"
    cats = [{"id": 1, "name": "person"}, {"id": 7, "name": "dog"}]
    for split, n in (("train", 2), ("test", 5)):
        images = [{"id": i, "file_name": f"{split}{i}.png", "width": 64, "height": 48} for i in range(n)]
        anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 2, 10, 20], "iscrowd": 0} for i in range(n)]
        anns.append({"id": 99, "image_id": 0, "category_id": 7, "bbox": [5, 5, 5, 5], "iscrowd": 0})
        (root).mkdir(exist_ok=True)
        (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        for im in images:
            _img(root / "infrared" / split / im["file_name"], mode="L")
    anns = read_coco_json(root / "test.json", {"person": 1})
    assert anns["test0.png"].boxes.tolist() == [[1, 2, 11, 22]] and anns["test0.png"].dropped == 1
    dm = PairedDetectionDataModule(str(root), "coco", {"person": 1}, paired=False, eval_batch_size=2, val_ratio=0.5)
    dm.setup()
    assert sum(len(b["target"]) for b in dm.test_dataloader()) == 5  # 5 images at batch 2: none dropped


def test_bad_detection_input_names_the_file(flir, tmp_path):
    (flir / "Annotations" / "FLIR_00002_PreviewData.xml").unlink()
    with pytest.raises(DatasetError, match=r"FLIR_00002_PreviewData\.jpeg: image has no annotation file"):
        PairedDetectionDataModule(str(flir), "flir_aligned", FLIR).setup()
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object><name>car</name>")
    with pytest.raises(DatasetError, match=r"bad\.xml: not a valid VOC xml"):
        read_voc_xml(bad, FLIR)
    _xml(bad, [])  # an empty annotation is valid: an image without objects
    assert read_voc_xml(bad, FLIR).boxes.shape == (0, 4)
    llvip = tmp_path / "LLVIP"
    _img(llvip / "infrared" / "train" / "a.jpg", mode="L")
    _img(llvip / "visible" / "train" / "a.jpg", size=(32, 32))
    _xml(llvip / "Annotations" / "a.xml", [("person", (1, 1, 5, 5))])
    _img(llvip / "infrared" / "test" / "c.jpg", mode="L")
    _img(llvip / "visible" / "test" / "c.jpg")
    _xml(llvip / "Annotations" / "c.xml", [])
    dm = PairedDetectionDataModule(str(llvip), "llvip", {"person": 1}, val_ratio=0.0)
    dm.setup()
    with pytest.raises(DatasetError, match=r"a\.jpg is \(48, 64\) but its RGB pair .*a\.jpg is \(32, 32\)"):
        dm.train_set[0]
    _img(llvip / "infrared" / "train" / "b.jpg", mode="L")
    with pytest.raises(DatasetError, match=r"b\.\*: image has no visible pair"):
        PairedDetectionDataModule(str(llvip), "llvip", {"person": 1}).setup()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusions_shapes_and_ranges(fusion):
    x3, t = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    y = fuse(x3, t, fusion)
    assert y.shape == (2, 3, 8, 8) and y.min() >= 0 and y.max() <= 1
    if fusion == "mul":
        assert torch.allclose(y, x3 * t)


@pytest.mark.parametrize("name,kw", [("tiny_unet", {}), ("unet", {"encoder": "resnet18"}),
                                     ("unet", {"encoder": "mobilenet_v3_small"})])
def test_translator_pads_odd_sizes_and_outputs_unit_range(name, kw):
    tr = create_translator(name, fusion="none", **kw)
    y = tr(torch.rand(1, 1, 37, 50))
    assert y.shape == (1, 3, 37, 50) and 0 <= y.min() and y.max() <= 1


def test_histeq_spreads_levels():
    x = torch.linspace(0.2, 0.3, 64).view(1, 1, 8, 8)
    y = HistEqTranslator()(x)
    assert y.shape == (1, 3, 8, 8) and y.min() == 0 and y.max() == 1


def _bn_tiny_fcos():
    det = create_detector("tiny_fcos", num_classes=4, size=32)
    det.backbone.s2[1] = nn.BatchNorm2d(16)  # a BatchNorm with running statistics, the pitfall case
    with torch.no_grad():
        det.backbone.s2[1].running_mean.uniform_(-1, 1)
    return det


def _batch(n=2, size=32):
    boxes = torch.tensor([[4.0, 4.0, 20.0, 24.0]])
    return {"ir": torch.rand(n, 1, size, size), "rgb": torch.rand(n, 3, size, size),
            "target": [{"boxes": boxes, "labels": torch.tensor([1])} for _ in range(n)]}


def test_frozen_detector_keeps_params_and_buffers_and_passes_gradients_to_input():
    det = TorchvisionDetector(_bn_tiny_fcos())
    before = {k: v.clone() for k, v in det.state_dict().items()}
    translator = create_translator("tiny_unet")
    opt = torch.optim.AdamW(translator.parameters(), lr=1e-2)
    det.train()  # what Lightning does to every submodule
    for _ in range(2):
        b = _batch()
        loss = sum(det.losses(translator(b["ir"]), b["target"]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in det.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in translator.parameters())
    after = det.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # params and buffers bit-identical


def test_metric_path_never_sees_targets(monkeypatch):
    """Faster R-CNN (and every detector) scores from a plain eval forward without targets."""
    module = ModTrModule(detector={"name": "fasterrcnn", "weights": "random", "num_classes": 4, "min_size": 32,
                                   "max_size": 32}, translator={"name": "tiny_unet"})
    calls = []
    real = module.detector.detector.forward

    def spy(images, targets=None):
        calls.append((module.detector.detector.training, targets is not None))
        return real(images, targets)

    monkeypatch.setattr(module.detector.detector, "forward", spy)
    module.validation_step(_batch(1), 0)
    assert calls and all(not training and not has_targets for training, has_targets in calls)
    module.detector.losses(torch.rand(1, 3, 32, 32), _batch(1)["target"])
    assert calls[-1] == (True, True)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A short ModTr toy run through the real entry point: pre-training (cached), ModTr, full FT."""
    out = tmp_path_factory.mktemp("modtr")
    args = ["experiment=modtr_toy", "data.n_train=48", "data.n_test=16", "data.size=32", "model.detector.size=32",
            "model.pretrain.steps=6", "trainer.max_steps=4", "data.batch_size=8", "callbacks=plain",
            f"paths.cache_dir={out / 'cache'}", f"hydra.run.dir={out / 'run'}", "~variants.finetune_head"]
    res = subprocess.run([sys.executable, "-m", "transfer.train", *args], cwd=out, capture_output=True, text=True,
                         timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return out, args, res


def test_toy_reports_three_pipelines_and_keeps_the_detector(toy_run):
    out, _, res = toy_run
    rows = [r for r in read_jsonl(out / "run" / "results.jsonl") if r["split"] == "test"]
    got = {(r["variant"], r["target"]) for r in rows}
    assert got == {("modtr_mul", "ir"), ("modtr_mul", "ir_zero_shot"), ("modtr_mul", "rgb"),
                   ("finetune_full", "ir"), ("finetune_full", "rgb")}
    rgb = {r["variant"]: r["metrics"] for r in rows if r["target"] == "rgb"}
    assert rgb["modtr_mul"]["detector_unchanged"] == 1.0 and rgb["finetune_full"]["detector_unchanged"] == 0.0
    assert len(list((out / "cache" / "toy_weights").glob("tiny_fcos-rgb-*.safetensors"))) == 1
    assert "variant" in res.stdout and "modtr_mul" in res.stdout


def test_modtr_checkpoint_holds_only_the_translator_and_refuses_another_detector(toy_run, tmp_path):
    out, _, _ = toy_run
    ckpt = next((out / "run" / "modtr_mul" / "checkpoints").glob("last.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["state_dict"] and all(k.startswith("translator.") for k in state["state_dict"])
    assert state["detector"]["name"] == "tiny_fcos" and len(state["detector"]["hash"]) == 16
    hp = state["hyper_parameters"]
    other = ModTrModule(detector={**hp["detector"]}, translator=hp["translator"])  # fresh random detector
    with pytest.raises(StateDictMismatchError, match="trained against detector tiny_fcos with weights hash"):
        other.on_load_checkpoint(state)


def test_service_routes_modalities_and_refuses_foreign_translators(tmp_path):
    torch.manual_seed(0)
    module = ModTrModule(detector={"name": "tiny_fcos", "num_classes": 4, "size": 32}, translator={"name": "tiny_unet"})
    module.eval()
    path = save_translator(module, tmp_path / "ir.safetensors")
    translator, meta = load_translator(path)
    assert meta["detector"]["hash"] == module.detector_hash
    service = DetectionService(module.detector, "tiny_fcos")
    service.add_translator("ir", path)
    rgb, ir = torch.rand(3, 32, 32), torch.rand(1, 32, 32)
    mixed = service.detect([rgb, ir, rgb], ["rgb", "ir", "rgb"])
    alone_rgb = module.detector.predict(rgb[None])[0]
    alone_ir = module.detector.predict(translator(ir[None]))[0]
    # one detector batch for all three images: equal to per-image calls up to batched-conv rounding
    assert torch.allclose(mixed[0]["scores"], alone_rgb["scores"], atol=1e-5)
    assert torch.allclose(mixed[2]["boxes"], alone_rgb["boxes"], atol=1e-4)
    assert torch.allclose(mixed[1]["scores"], alone_ir["scores"], atol=1e-5)
    assert service.healthy()
    with pytest.raises(KeyError, match="no translator for modality 'depth'"):
        service.detect([ir], "depth")
    other = ModTrModule(detector={"name": "tiny_fcos", "num_classes": 4, "size": 32}, translator={"name": "tiny_unet"})
    with pytest.raises(StateDictMismatchError, match="trained against tiny_fcos"):
        DetectionService(other.detector, "tiny_fcos").add_translator("ir", path)


def test_detect_cli_writes_coco_json(tmp_path):
    torch.manual_seed(0)
    module = ModTrModule(detector={"name": "tiny_fcos", "num_classes": 4, "size": 64}, translator={"name": "tiny_unet"})
    weights = tmp_path / "det.pt"
    torch.save(module.detector.detector.state_dict(), weights)
    path = save_translator(module, tmp_path / "ir.safetensors")
    for i in range(3):
        _img(tmp_path / "images" / f"{i}.png", size=(32, 32), mode="L")
    res = subprocess.run([sys.executable, "-m", "transfer.detect", "--detector", "tiny_fcos", "--num-classes", "4",
                          "--detector-weights", str(weights), "--modality", "ir", "--translator", str(path),
                          str(tmp_path / "images"), "--out", str(tmp_path / "det.json")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    dets = json.loads((tmp_path / "det.json").read_text())
    from datamodules.detection import load_image
    from transfer.detect import detections_to_coco

    service = DetectionService(module.detector, "tiny_fcos")
    service.add_translator("ir", path)
    files = sorted((tmp_path / "images").iterdir())
    expected = detections_to_coco(files, service.detect([load_image(f, "L") for f in files], "ir"))
    assert dets == expected  # the CLI writes what the service detects, image by image
    box = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([3])}
    assert detections_to_coco([Path("a.png")], [box]) == [
        {"image_id": 0, "file_name": "a.png", "category_id": 3, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9}]


def test_synthetic_rgbir_goes_through_the_llvip_reader(tmp_path):
    dm = SyntheticRGBIRDataModule(str(tmp_path), n_train=5, n_test=2, size=32)
    dm.setup()
    assert dm.format == "llvip" and (Path(dm.root) / "Annotations" / "train_00000.xml").exists()
    item = dm.test_set[0]
    assert item["ir"].shape == (1, 32, 32) and item["rgb"].shape == (3, 32, 32) and len(item["target"]["boxes"])


@pytest.mark.slow
def test_modtr_toy_meets_the_acceptance_bands(tmp_path):
    """The full toy (spec §9 bands): zero-shot IR < 10; ModTr IR >= 40 and >= 0.8 x RGB-on-RGB; RGB unchanged
    exactly; full-FT RGB <= RGB before - 8."""
    res = subprocess.run([sys.executable, "-m", "transfer.train", "experiment=modtr_toy", "callbacks=plain",
                          f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    m = {(r["variant"], r["target"]): r["metrics"] for r in read_jsonl(tmp_path / "run" / "results.jsonl")
         if r["split"] == "test"}
    rgb_before = m[("modtr_mul", "rgb")]["map"] * 100
    assert m[("modtr_mul", "ir_zero_shot")]["map"] * 100 < 10
    assert m[("modtr_mul", "ir")]["map"] * 100 >= max(40, 0.8 * rgb_before)
    assert m[("modtr_mul", "rgb")]["detector_unchanged"] == 1.0
    assert m[("finetune_full", "rgb")]["map"] * 100 <= rgb_before - 8


@pytest.mark.slow  # two processes on a 2-core machine: with the slow tests, to keep the default suite under 8 min
def test_ddp_modtr_run_matches_single_process_evaluation(tmp_path, make_cfg):
    """ModTr trained with strategy=ddp on 2 gloo processes; its synced test mAPs equal a one-process
    evaluation of the same translator checkpoint."""
    common = ["experiment=modtr_toy", "variants=null", "data.n_train=48", "data.n_test=16", "data.size=32",
              "model.detector.size=32", "model.pretrain.steps=6", "data.batch_size=4", "callbacks=plain",
              f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "transfer.train", *common, "trainer=ddp", "trainer.accelerator=cpu",
                          "trainer.devices=2", "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'ddp'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = {r["target"]: r for r in read_jsonl(tmp_path / "ddp" / "results.jsonl") if r["split"] == "test"}
    assert ddp["rgb"]["metrics"]["detector_unchanged"] == 1.0
    run(make_cfg(*common, "trainer=cpu", f"ckpt_path={ddp['ir']['checkpoint']}", config_name="eval",
                 run_dir=tmp_path / "single"))
    single = {r["target"]: r for r in read_jsonl(tmp_path / "single" / "results.jsonl") if r["split"] == "test"}
    for target in ("ir", "ir_zero_shot", "rgb"):
        assert single[target]["metrics"]["map"] == pytest.approx(ddp[target]["metrics"]["map"], abs=1e-6)


def test_llvip_annotation_without_image_is_named(tmp_path):
    root = tmp_path / "LLVIP"
    for split in ("train", "test"):
        _img(root / "infrared" / split / f"{split}1.jpg", mode="L")
        _img(root / "visible" / split / f"{split}1.jpg")
        _xml(root / "Annotations" / f"{split}1.xml", [("person", (1, 1, 9, 9))])
    PairedDetectionDataModule(str(root), "llvip", {"person": 1}, val_ratio=0.0).setup()
    _xml(root / "Annotations" / "ghost.xml", [])
    dm = PairedDetectionDataModule(str(root), "llvip", {"person": 1}, val_ratio=0.0)
    dm.setup()  # LLVIP ships such files: counted and skipped
    assert dm.data_summary()["dropped"] == {"annotation files without an image": 1}
    with pytest.raises(DatasetError, match=r"ghost\.xml: annotation has no image.*strict"):
        PairedDetectionDataModule(str(root), "llvip", {"person": 1}, val_ratio=0.0, strict=True).setup()


def test_box_aware_flip_moves_boxes_with_both_modalities(flir):
    dm = PairedDetectionDataModule(str(flir), "flir_aligned", FLIR, val_ratio=0.0, hflip=1.0)
    dm.setup()
    plain = PairedDetectionDataModule(str(flir), "flir_aligned", FLIR, val_ratio=0.0)
    plain.setup()
    a, b = dm.train_set[0], plain.train_set[0]
    assert torch.equal(a["ir"], b["ir"].flip(-1)) and torch.equal(a["rgb"], b["rgb"].flip(-1))
    w = b["ir"].shape[-1]
    expected = b["target"]["boxes"].clone()
    expected[:, [0, 2]] = w - b["target"]["boxes"][:, [2, 0]]
    assert torch.allclose(a["target"]["boxes"], expected) and torch.equal(a["target"]["labels"], b["target"]["labels"])


def test_modtr_then_finetune_starts_from_a_trained_translator(tmp_path):
    torch.manual_seed(0)
    det = {"name": "tiny_fcos", "num_classes": 4, "size": 32}
    first = ModTrModule(detector=det, translator={"name": "tiny_unet"})
    with torch.no_grad():
        next(first.translator.parameters()).add_(1.0)
    path = save_translator(first, tmp_path / "t.safetensors")
    both = ModTrModule(detector=det, translator={"name": "tiny_unet"}, translator_weights=str(path),
                       train_detector="full", train_translator=False)
    assert all(torch.equal(a, b) for a, b in zip(first.translator.state_dict().values(),
                                                  both.translator.state_dict().values()))
    assert not any(p.requires_grad for p in both.translator.parameters())
    assert all(p.requires_grad for p in both.detector.parameters())


def test_detect_cli_names_a_folder_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    from transfer.detect import main as detect_main

    detect = ["--detector", "tiny_fcos", "--num-classes", "4", "--detector-weights", "random"]
    with pytest.raises(SystemExit):
        detect_main([*detect, str(tmp_path / "empty")])
    assert "empty: no images found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        detect_main([*detect, "--modality", "ir", str(tmp_path / "empty")])
    assert "--modality ir needs --translator" in capsys.readouterr().err

    with pytest.raises(SystemExit):  # no silent random detector: --detector-weights is required
        detect_main(["--detector", "tiny_fcos", str(tmp_path / "empty")])
    assert "--detector-weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        detect_main(["--detector", "tiny_fcos", "--detector-weights", "random", str(tmp_path / "nope")])
    assert "nope: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["detector", "translator", "both"])
def test_activation_checkpointing_gives_the_same_gradients_and_keeps_the_detector(which):
    def step(mode):
        torch.manual_seed(0)
        module = ModTrModule(detector={"name": "tiny_fcos", "num_classes": 4, "size": 64},
                             translator={"name": "unet", "encoder": "resnet18", "pretrained": None},
                             activation_checkpointing=mode)
        before = {k: v.clone() for k, v in module.detector.state_dict().items()}
        torch.manual_seed(1)
        ir = torch.rand(2, 1, 64, 64)
        targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])}] * 2
        loss = sum(module.detector.losses(module.translator(ir), targets).values())
        loss.backward()
        after = module.detector.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical, frozen
        assert all(p.grad is None for p in module.detector.parameters())
        return loss.detach(), {n: p.grad.clone() for n, p in module.translator.named_parameters()}, module

    loss0, grads0, plain = step("none")
    loss1, grads1, module = step(which)
    assert torch.equal(loss0, loss1)
    # the translator's BatchNorm statistics count the batch once, not again when a block is recomputed
    kept, ran = plain.translator.state_dict(), module.translator.state_dict()
    assert all(torch.equal(kept[k], ran[k]) for k in kept)
    assert grads0.keys() == grads1.keys()
    assert max((grads0[k] - grads1[k]).abs().max().item() for k in grads0) < 1e-6
    names = {type(m).__name__ for m in module.modules()}
    assert any(n.startswith("Recomputed") for n in names)  # it really is on


def test_bf16_autocast_step_on_cpu():
    torch.manual_seed(0)
    module = ModTrModule(detector={"name": "tiny_fcos", "num_classes": 4, "size": 64}, translator={"name": "tiny_unet"},
                         activation_checkpointing="detector")
    ir = torch.rand(2, 1, 64, 64)
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(module.detector.losses(module.translator(ir), targets).values())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in module.translator.parameters())


def test_checkpointed_resnet_detector_keeps_no_stem_maps_and_gives_the_same_input_gradient():
    """A torchvision ResNet-FPN detector (frozen, as ModTr uses it): with checkpointing the stem (conv1, bn1, relu,
    maxpool) runs as one recomputed segment and the stages in segments of two bottlenecks, so none of the stem's
    half-resolution maps and only every other bottleneck input is kept for the backward pass; the gradient reaching
    the image is the one without checkpointing."""
    import torchvision

    from transfer.models.detectors import checkpoint_detector, freeze_batchnorm

    def step(checkpointed: bool):
        torch.manual_seed(0)
        det = freeze_batchnorm(torchvision.models.detection.fcos_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64)).train()
        det.requires_grad_(False)
        if checkpointed:
            checkpoint_detector(det)
        image = torch.rand(1, 3, 64, 64, requires_grad=True)
        target = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1])}]
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            loss = sum(det(list(image), target).values())
        loss.backward()
        return loss.detach(), image.grad, shapes, det

    loss0, grad0, shapes0, _ = step(False)
    loss1, grad1, shapes1, det = step(True)
    assert type(det.backbone.body).__name__.startswith("RecomputedStem")
    assert type(det.backbone.body.layer1).__name__ == "RecomputedSequential" and det.backbone.body.layer1.per == 2
    assert torch.equal(loss0, loss1) and (grad0 - grad1).abs().max() < 1e-6
    stem_maps = [s for s in shapes0 if len(s) == 4 and s[1] == 64 and s[2] == 32]  # conv1/bn1/relu at 32x32
    assert stem_maps and not [s for s in shapes1 if len(s) == 4 and s[1] == 64 and s[2] == 32]
    # 256-channel maps at 16x16 are layer1's block outputs: kept only where a segment starts (layer1's bottleneck 2,
    # layer2's first segment), not also bottleneck 1's input as with one block per segment
    assert len([s for s in shapes1 if s == (1, 256, 16, 16)]) == 2
