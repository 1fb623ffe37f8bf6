"""Few-shot SFDA through the real entry point: the toy's scenarios x variants x shot seeds, source data never
read during adaptation, the few-shot protocol and scenarios, SND selection, DDP, and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, run_toy
from datamodules import DomainDataModule, FewShotTargetDataModule
from datamodules.domains import DatasetError
from datamodules.synthetic import SyntheticDomainDataModule
from transfer.safeload import CheckpointFileError
from transfer.statedict import StateDictMismatchError
from transfer.methods.sfda import (SAM, FewShotSFDAModule, MissingSourceModelError, SHOTNet, TargetClassesError,
                                   save_source_model)
from transfer.methods.sfda.module import SOURCE_FREE
from transfer.records import read_jsonl
from transfer.collect import select_variants
from transfer.runner import run

# the toy at a tiny scale: 12 images per class and style, 16 px, a 1-epoch source stage, 4 adaptation steps
TINY = ["experiment=sfda_toy", "callbacks=plain", "data.domains.per_class=12", "data.domains.size=16",
        "model.source_stage.data.per_class=12", "model.source_stage.data.size=16",
        "model.source_stage.max_epochs=1", "data.steps=4", "model.lp_steps=2", "trainer.val_check_interval=2",
        "override_sets.unlabelled=['data.train_on=unlabelled','trainer.max_steps=-1','trainer.max_epochs=1','trainer.val_check_interval=1.0',"
        "'trainer.check_val_every_n_epoch=1','selection.protocol=last','selection.monitor=null']"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from conftest import compose_config
    from hydra.core.global_hydra import GlobalHydra

    out = tmp_path_factory.mktemp("sfda")
    cfg = compose_config([*TINY, "~scenarios.label_shift", "~variants.ft_1shot", "sweep={data.shot_seed: [0, 1]}"],
                         out / "run", out / "cache")
    rows = run(cfg)
    GlobalHydra.instance().clear()
    return out, rows


def test_toy_runs_every_scenario_variant_and_seed_and_summarises(toy):
    out, rows = toy
    test = [r for r in rows if r["split"] == "test"]
    variants = {r["variant"] for r in test}
    assert variants == {f"{s}/{v}" for s in ("standard", "ood") for v in ("source_only", "shot", "ft_3shot", "lp_ft_3shot")}
    for v in variants:
        seeds = sorted(r["sweep_point"] for r in test if r["variant"] == v)
        assert seeds == ["data.shot_seed=0", "data.shot_seed=1"]
    assert all({"acc", "mean_class_acc", "snd"} <= set(r["metrics"]) for r in test)
    summary = (out / "run" / "summary.csv").read_text().splitlines()
    assert summary[0] == "variant,target,metric,n,mean,std"
    line = next(s for s in summary if s.startswith("standard/ft_3shot,infrared,acc,"))
    accs = [r["metrics"]["acc"] for r in test if r["variant"] == "standard/ft_3shot"]
    assert float(line.split(",")[4]) == pytest.approx(np.mean(accs), abs=1e-6)
    assert float(line.split(",")[5]) == pytest.approx(np.std(accs, ddof=1), abs=1e-6)
    # few-shot runs select on the held-out shots, source-free ones take their last state
    sel = {r["variant"].split("/")[1]: (r["selection"], Path(r["checkpoint"]).name) for r in test if r["checkpoint"]}
    assert sel["ft_3shot"][0] == "fewshot_val" and sel["ft_3shot"][1].startswith("best")
    assert sel["shot"] == ("last", "last.ckpt")


def test_ood_scenario_uses_a_source_model_of_the_known_classes(toy):
    out, rows = toy
    cache = out / "cache" / "toy_weights"
    models = sorted(cache.glob("sfda-source-*.safetensors"))
    assert len(models) == 2  # standard (5 classes) and ood (3 known), each trained once for all seeds
    from transfer.methods.sfda import source_model_info

    assert sorted(len(source_model_info(m)["classes"]) for m in models) == [3, 5]


def _synthetic(tmp_path, **kw) -> SyntheticDomainDataModule:
    return SyntheticDomainDataModule(str(tmp_path), per_class=kw.pop("per_class", 10), size=8, **kw)


def test_protocol_split_shots_and_pool_are_seeded_and_disjoint(tmp_path):
    def make(seed, **kw):
        dm = FewShotTargetDataModule(_synthetic(tmp_path, targets=["sketch"]), "sketch", shots=3, shot_seed=seed, **kw)
        dm.setup()
        return dm

    dm, again, other = make(1), make(1), make(2)
    assert (len(dm.shot_set), len(dm.val_set), len(dm.test_set), len(dm.pool_eval)) == (15, 5, 10, 40)
    shots, val, test = ({p for p, _ in d.samples} for d in (dm.shot_set, dm.val_set, dm.test_set))
    pool = {p for p, _ in dm.pool_eval.images.samples}
    assert not (shots & val) and not (shots & test) and not (val & test) and not (pool & test)
    assert shots | val <= pool
    assert np.bincount(dm.shot_set.labels).tolist() == [3] * 5  # exactly k per class
    assert dm.shot_set.samples == again.shot_set.samples and dm.test_set.samples == again.test_set.samples
    assert dm.shot_set.samples != other.shot_set.samples
    dm.train_on = "shots"
    dm.steps = 7
    assert len(dm.train_dataloader()) == 7  # with replacement from the k*C shots, a fixed number of steps
    dm.train_on = "unlabelled"
    _, y, idx = next(iter(dm.train_dataloader()))
    assert (y == -1).all() and idx.max() < 40  # labels hidden from source-free methods


def test_ood_pool_keeps_unknown_classes_and_label_shift_is_long_tailed(tmp_path):
    dm = FewShotTargetDataModule(_synthetic(tmp_path, targets=["sketch"]), "sketch", shots=2, scenario="ood", num_known=3)
    dm.setup()
    assert dm.num_classes == 3 and len(dm.classes) == 3
    assert set(dm.shot_set.labels) == {0, 1, 2} and set(dm.test_set.labels) <= {0, 1, 2}
    pool_labels = {y for _, y in dm.pool_eval.images.samples}
    assert len(pool_labels) == 5  # the unknown classes are in the unlabelled pool
    ls = FewShotTargetDataModule(_synthetic(tmp_path, targets=["sketch"], per_class=20), "sketch", shots=1,
                                 scenario="label_shift", imbalance=5)
    ls.setup()
    counts = np.bincount([y for _, y in ls.pool_eval.images.samples] + ls.test_set.labels)
    assert counts.max() == 20 and counts.min() == 4


def test_label_shift_reads_rsut_list_files(tmp_path):
    root = tmp_path / "office_home_rsut"
    for i in range(3):
        for k in range(6 if i == 0 else 3):
            f = root / "Clipart" / f"c{i}" / f"{k}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(f)
    lines = [f"Clipart/c{i}/{k}.png {i}" for i in range(3) for k in range(6 if i == 0 else 3)]
    (root / "Clipart_UT.txt").write_text("\n".join(lines) + "\n")
    domains = DomainDataModule(str(root), "office_home_rsut", targets=["Cl"], classes=["c0", "c1", "c2"], image_size=8)
    dm = FewShotTargetDataModule(domains, "Clipart", shots=1, scenario="label_shift", label_shift_list="{domain}_UT.txt")
    dm.setup()
    assert len(dm.pool_eval) + len(dm.test_set) == 12
    (root / "Clipart_UT.txt").unlink()
    with pytest.raises(DatasetError, match="Clipart_UT.txt: label-shift list file"):
        FewShotTargetDataModule(domains, "Clipart", shots=1, scenario="label_shift",
                                label_shift_list="{domain}_UT.txt").setup()


def test_too_many_shots_name_the_class(tmp_path):
    dm = FewShotTargetDataModule(_synthetic(tmp_path, targets=["sketch"]), "sketch", shots=8)
    with pytest.raises(DatasetError, match="class 'circle' has 8 images, fewer than the 8 shots \\+ 1 validation"):
        dm.setup()


def test_adaptation_module_refuses_source_domains(tmp_path):
    with pytest.raises(ValueError, match="reads no source data"):
        FewShotTargetDataModule(_synthetic(tmp_path, sources=["photo"], targets=["sketch"]), "sketch")


def _export(tmp_path, classes, backbone="test_resnet", bottleneck=16) -> Path:
    path = tmp_path / "src" / "source_model.safetensors"
    save_source_model(SHOTNet(backbone, len(classes), bottleneck), path, backbone, bottleneck, classes)
    return path


def _adapt(tmp_path, source, strategy="ft", backbone="test_resnet", bottleneck=16, max_steps=3, **data_kw):
    import lightning as L

    data_kw.setdefault("train_on", "unlabelled" if strategy in SOURCE_FREE else "shots")
    dm = FewShotTargetDataModule(_synthetic(tmp_path / "data", targets=["sketch"]), "sketch", shots=2, steps=max_steps,
                                 batch_size=8, **data_kw)
    model = FewShotSFDAModule(strategy=strategy, source_model=str(source), backbone=backbone, bottleneck=bottleneck,
                              lr=1e-3, lp_steps=1)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, max_epochs=-1 if strategy in ("ft", "lp", "lp_ft") else 2)
    trainer.fit(model, datamodule=dm)
    return model, trainer


SHAPES = ["circle", "square", "triangle", "cross", "star"]


def test_source_checkpoint_of_another_architecture_or_label_space_is_refused(tmp_path):
    src = _export(tmp_path, SHAPES)
    with pytest.raises(StateDictMismatchError, match="source model is test_resnet with a 16-d bottleneck"):
        _adapt(tmp_path, src, bottleneck=32)
    other = _export(tmp_path / "o", ["circle", "square", "hexagon", "cross", "star"])
    with pytest.raises(TargetClassesError, match=r"\['triangle'\] are not among its classes"):
        _adapt(tmp_path, other)
    with pytest.raises(MissingSourceModelError, match="experiment=sfda_source_"):
        _adapt(tmp_path, tmp_path / "nowhere.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointFileError, match="bad.safetensors: not a readable safetensors"):
        _adapt(tmp_path, tmp_path / "bad.safetensors")


def test_lp_changes_only_the_head_and_keeps_batchnorm_statistics(tmp_path):
    src = _export(tmp_path, SHAPES)
    before = SHOTNet("test_resnet", 5, 16)
    from transfer.methods.sfda import load_source_model

    load_source_model(before, src, "test_resnet", 16)
    lp, _ = _adapt(tmp_path, src, strategy="lp")
    ft, trainer = _adapt(tmp_path, src, strategy="ft")
    assert isinstance(trainer.optimizers[0], SAM)  # SAM is on by default
    for name, t in before.state_dict().items():
        changed_lp = not torch.equal(t, lp.net.state_dict()[name])
        assert changed_lp == name.startswith("netC."), name
    bn = "netB.1.running_mean"
    assert not torch.equal(before.state_dict()[bn], ft.net.state_dict()[bn])  # FT: BN in train mode (faithful)


def test_lp_ft_switches_to_full_fine_tuning_with_a_fresh_optimizer(tmp_path):
    src = _export(tmp_path, SHAPES)
    model, trainer = _adapt(tmp_path, src, strategy="lp_ft", max_steps=3)  # LP for 1 step, then FT
    assert {g["lr"] for g in trainer.optimizers[0].param_groups} == {1e-3}
    assert all(p.requires_grad for p in model.net.parameters())


@pytest.mark.parametrize("strategy", ["shot", "nrc", "aad"])
def test_source_free_baselines_train_the_features_and_keep_the_classifier(tmp_path, strategy):
    src = _export(tmp_path, SHAPES)
    model, _ = _adapt(tmp_path, src, strategy=strategy)
    from safetensors.torch import load_file

    state = load_file(str(src))
    now = model.net.state_dict()
    assert all(torch.equal(state[k], now[k]) for k in state if k.startswith("netC."))
    assert any(not torch.equal(state[k], now[k]) for k in state if k.startswith("netB.0"))


def test_adaptation_never_reads_source_domains(tmp_path, monkeypatch, make_cfg):
    """Run once (the toy's source stage trains on photo + painting and is cached), delete those styles from disk,
    then adapt again with SHOT and with FT while recording every domain read: only the target may appear."""
    import shutil

    from omegaconf import open_dict

    def cfg(strategy, name):
        over = (["data.train_on=unlabelled", "trainer.max_steps=-1", "trainer.max_epochs=1", "selection=last"]
                if strategy == "shot"
                else ["trainer.max_epochs=-1", "selection=fewshot_val"])
        c = make_cfg(*TINY, "scenarios=null", "variants=null", "sweep=null", f"model.strategy={strategy}", *over,
                     run_dir=tmp_path / name)
        with open_dict(c):
            c.paths.cache_dir = str(tmp_path / "cache")
        return c

    run(cfg("shot", "first"))
    styles = list((tmp_path / "cache").glob("synthetic_domains-*/photo")) + \
        list((tmp_path / "cache").glob("synthetic_domains-*/painting"))
    assert len(styles) == 2
    for d in styles:
        shutil.rmtree(d)
    read = []
    original = DomainDataModule.read_domain
    monkeypatch.setattr(DomainDataModule, "read_domain",
                        lambda self, name, split="all": read.append(name) or original(self, name, split))
    for strategy in ("shot", "ft"):
        rows = run(cfg(strategy, strategy))
        assert any(r["split"] == "test" for r in rows)
    assert read and set(read) == {"infrared"}


def test_snd_selection_picks_the_densest_candidate_per_seed():
    def row(variant, seed, snd, acc):
        return {"split": "test", "variant": variant, "sweep_point": seed, "fold": None, "target": "t",
                "metrics": {"snd": snd, "acc": acc}}

    rows = [row("std/shot_a", 0, 1.0, 0.5), row("std/shot_b", 0, 2.0, 0.4), row("std/shot_a", 1, 3.0, 0.7),
            row("std/shot_b", 1, 2.5, 0.9), row("std/ft", 0, 9.0, 0.1)]
    from omegaconf import OmegaConf

    chosen = select_variants(rows, OmegaConf.create({"shot": {"candidates": ["shot_a", "shot_b"], "metric": "snd"}}))
    assert sorted((r["sweep_point"], r["metrics"]["acc"], r["selected_from"]) for r in chosen) == [
        (0, 0.4, "std/shot_b"), (1, 0.7, "std/shot_a")]
    assert {r["variant"] for r in chosen} == {"std/shot"}
    assert all(r["selected_by"] == {"metric": "snd", "mode": "max", "label_free": True} for r in chosen)
    by_acc = OmegaConf.create({"shot": {"candidates": ["shot_a", "shot_b"], "metric": "acc"}})
    with pytest.raises(ValueError, match="picks by 'acc', which needs target labels"):
        select_variants(rows, by_acc)
    assert all("[oracle]" in r["selection"] for r in select_variants(rows, by_acc, "oracle"))


@pytest.mark.slow  # two gloo processes end to end (~50 s): with the acceptance tests, sharing the cores
def test_ddp_adaptation_matches_single_process_evaluation(tmp_path, cache_dir, make_cfg):
    """SHOT over 2 gloo processes (memory banks and SND gathered across ranks), then the last checkpoint scored
    in one process must give the same target accuracy."""
    args = [*TINY, "scenarios=null", "variants=null", "sweep=null", "model.strategy=nrc", "data.train_on=unlabelled", "trainer.max_steps=-1",
            "trainer.max_epochs=1", "selection=last", f"paths.cache_dir={cache_dir}"]
    res = cli("transfer.train", *args, "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.devices=2", f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_jsonl(tmp_path / "ddp" / "results.jsonl")
    test = next(r for r in rows if r["split"] == "test")
    run(make_cfg(*args, f"ckpt_path={test['checkpoint']}", config_name="eval", run_dir=tmp_path / "single"))
    single = next(r for r in read_jsonl(tmp_path / "single" / "results.jsonl") if r["split"] == "test")
    assert single["metrics"]["acc"] == pytest.approx(test["metrics"]["acc"], abs=1e-6)
    assert single["metrics"]["mean_class_acc"] == pytest.approx(test["metrics"]["mean_class_acc"], abs=1e-6)


@pytest.mark.slow
def test_sfda_toy_orderings(tmp_path):
    """The paper's thesis on the toy, averaged over 3 shot seeds: 3-shot FT beats the source model everywhere and
    beats SHOT under label shift (per-class accuracy) and with OOD samples in the unlabelled pool."""
    res = run_toy("sfda_toy", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    import csv

    mean = {(r["variant"], r["metric"]): float(r["mean"]) for r in csv.DictReader((tmp_path / "run" / "summary.csv").open())}
    for scenario, metric in (("standard", "acc"), ("label_shift", "mean_class_acc"), ("ood", "acc")):
        assert mean[(f"{scenario}/ft_3shot", metric)] > mean[(f"{scenario}/source_only", metric)]
    assert mean[("standard/shot", "acc")] > mean[("standard/source_only", "acc")]
    assert mean[("label_shift/ft_3shot", "mean_class_acc")] > mean[("label_shift/shot", "mean_class_acc")]
    assert mean[("ood/ft_3shot", "acc")] > mean[("ood/shot", "acc")]
