"""End-to-end runs of the real configs: records, selection, resume, eval entry, determinism, checkpoints."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, cli, repo_root
from transfer.statedict import StateDictMismatchError
from transfer.records import read_jsonl
from transfer.runner import run


def _rows(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "results.jsonl")


@pytest.fixture
def trained(make_cfg, tmp_path):
    cfg = make_cfg("experiment=source_only_toy", *TINY)
    rows = run(cfg)
    return cfg, rows, tmp_path / "run"


def test_toy_run_writes_records_config_and_checkpoints(trained):
    cfg, rows, run_dir = trained
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "config_resolved.yaml").exists()
    assert (run_dir / "logs" / "metrics.csv").exists()
    summary = json.loads((run_dir / "data_summary.json").read_text())  # what the run read, beside its results
    assert summary["classes"] == ["circle", "square", "triangle", "cross", "star"] and summary["splits"]["test"]
    saved = _rows(run_dir)
    assert saved == json.loads(json.dumps(rows))
    test_rows = {r["target"]: r for r in saved if r["split"] == "test"}
    assert set(test_rows) == {"sketch", "infrared"}
    row = test_rows["sketch"]
    for key in ("experiment", "method", "seed", "fold", "selection", "checkpoint", "git_commit", "metrics"):
        assert key in row
    assert row["experiment"] == "source_only_toy" and row["method"] == "source_only"
    assert row["selection"] == "source_val" and Path(row["checkpoint"]).name.startswith("best-")
    assert 0.0 <= row["metrics"]["acc"] <= 1.0
    assert [r["target"] for r in saved if r["split"] == "val"] == ["source"]


def test_experiment_overrides_take_effect(make_cfg, tmp_path, monkeypatch):
    """An experiment's `override /group: option` lines replace the primary config's choices."""
    folder = tmp_path / "exps"
    folder.mkdir()
    (folder / "ddp_probe.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /trainer: ddp\n  - override /selection: last\n"
        "model:\n  lr: 0.123\n"
    )
    monkeypatch.setenv("TRANSFER_EXPERIMENTS_DIR", str(folder))
    from transfer import experiments

    assert experiments.register() == folder
    cfg = make_cfg("experiment=ddp_probe")
    assert cfg.trainer.strategy.startswith("ddp") and cfg.selection.protocol == "last"
    assert cfg.model.lr == 0.123 and cfg.experiment_name == "ddp_probe"
    plain = make_cfg()
    assert plain.trainer.strategy == "auto" and plain.selection.protocol == "source_val"


def test_same_seed_same_numbers(make_cfg, tmp_path):
    a = run(make_cfg("experiment=source_only_toy", *TINY, run_dir=tmp_path / "a"))
    b = run(make_cfg("experiment=source_only_toy", *TINY, run_dir=tmp_path / "b"))
    assert [r["metrics"] for r in a] == [r["metrics"] for r in b]


def test_selection_last_and_oracle_are_recorded(make_cfg, tmp_path):
    rows = run(make_cfg("experiment=source_only_toy", *TINY, "selection=last", run_dir=tmp_path / "last"))
    assert {r["selection"] for r in rows} == {"last"} and Path(rows[0]["checkpoint"]).name == "last.ckpt"
    assert {r["selection_reads_target_labels"] for r in rows} == {False}
    rows = run(make_cfg("experiment=source_only_toy", *TINY, "selection=oracle", run_dir=tmp_path / "oracle"))
    assert {r["selection"] for r in rows} == {"oracle"} and {r["selection_reads_target_labels"] for r in rows} == {True}
    assert "target_acc" in next(r for r in rows if r["split"] == "val")["metrics"]


def test_resume_from_last_checkpoint(trained, make_cfg, tmp_path):
    _, _, run_dir = trained
    shutil.copytree(run_dir, tmp_path / "original")  # the shared run stays as it is
    last = tmp_path / "original" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    cfg = make_cfg("experiment=source_only_toy", *TINY, "trainer.max_epochs=3", f"ckpt_path={last}",
                   run_dir=tmp_path / "resumed")
    run(cfg)
    assert (tmp_path / "resumed" / "RESUMED_INTO").read_text().strip() == str(tmp_path / "original")
    resumed = torch.load(last, weights_only=True)  # continued in the checkpoint's own run folder
    assert (first["epoch"], resumed["epoch"]) == (2, 3)  # epochs completed
    steps = first["global_step"]
    assert resumed["global_step"] == steps + steps // 2  # one more epoch, not three


def test_eval_entry_reproduces_test_metrics(trained, make_cfg, tmp_path):
    _, rows, _ = trained
    ckpt = next(r["checkpoint"] for r in rows if r["split"] == "test")
    cfg = make_cfg("experiment=source_only_toy", *TINY, f"ckpt_path={ckpt}", config_name="eval",
                   run_dir=tmp_path / "eval")
    again = run(cfg)
    pick = lambda rs: {(r["split"], r["target"]): r["metrics"]["acc"] for r in rs}  # noqa: E731
    assert pick(again) == pytest.approx(pick(rows))


def test_checkpoint_of_another_model_gives_a_clear_error(trained, make_cfg, tmp_path):
    _, rows, _ = trained
    ckpt = rows[0]["checkpoint"]
    cfg = make_cfg("experiment=source_only_toy", *TINY, "model.backbone=test_efficientnet",
                   f"ckpt_path={ckpt}", config_name="eval", run_dir=tmp_path / "other")
    with pytest.raises(StateDictMismatchError, match=r"different model.*backbone='test_resnet'") as e:
        run(cfg)
    assert len(str(e.value)) < 600  # a sentence, not a dump of every tensor


def test_unknown_experiment_lists_available_ones(tmp_path):
    out = cli("transfer.train", "experiment=source_only_tyo", cwd=tmp_path, timeout=120)
    assert out.returncode != 0
    assert "source_only_tyo" in out.stderr and "source_only_toy" in out.stderr


@pytest.mark.slow  # two gloo processes end to end (~50 s): with the acceptance tests, sharing the cores
def test_ddp_two_processes_match_single_process_metrics(tmp_path, cache_dir, make_cfg):
    """Train with strategy=ddp over 2 gloo processes from the CLI (any cwd), then score the selected
    checkpoint in one process: the DDP-synced torchmetrics values must equal the single-process ones."""
    args = ["experiment=source_only_toy", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            f"paths.cache_dir={cache_dir}"]
    out = cli("transfer.train", *args, f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_jsonl(tmp_path / "ddp" / "results.jsonl")
    assert len(rows) == 3  # rank 0 alone writes: val/source + 2 targets
    ckpt = rows[0]["checkpoint"]
    run(make_cfg(*args[:-3], "trainer=cpu", f"ckpt_path={ckpt}", config_name="eval", run_dir=tmp_path / "single"))
    single = read_jsonl(tmp_path / "single" / "results.jsonl")
    for a, b in zip(rows, single):
        assert (a["split"], a["target"]) == (b["split"], b["target"])
        assert a["metrics"]["acc"] == pytest.approx(b["metrics"]["acc"], abs=1e-6)
    # the same run on two "nodes": two torchrun launchers (one process each) meeting on 127.0.0.1
    port = _free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "transfer.train", *args[:-3],
            "trainer=multinode", "trainer.accelerator=cpu", "trainer.devices=1", f"paths.cache_dir={cache_dir}",
            f"hydra.run.dir={tmp_path / 'nodes'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(node[:5] + ["--node-rank", str(r)] + node[5:], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:] + outs[1][1][-3000:]
    nodes = read_jsonl(tmp_path / "nodes" / "results.jsonl")
    assert [(r["target"], r["metrics"]) for r in nodes] == [(r["target"], r["metrics"]) for r in rows]
    a = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "nodes" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # two nodes x 1 process == one node x 2 processes, bit for bit


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_module_entry_works_from_another_directory(tmp_path):
    out = cli("transfer.train", "--cfg", "job", "experiment=source_only_toy", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backbone: test_resnet" in out.stdout and str(repo_root()) not in str(tmp_path)


def test_variant_overrides_read_like_the_command_line():
    from omegaconf import OmegaConf

    from transfer.runner import apply_overrides

    cfg = OmegaConf.create({"model": {"lr": 1.0, "moe": {"rank": 2}, "extra": 3}})
    OmegaConf.set_struct(cfg, True)
    out = apply_overrides(cfg, ["model.lr=0.5", "+model.moe.alpha=8", "~model.extra", "+model.opt={name: SGD}"])
    assert OmegaConf.to_container(out) == {"model": {"lr": 0.5, "moe": {"rank": 2, "alpha": 8}, "opt": {"name": "SGD"}}}
    with pytest.raises(Exception, match="alpha"):  # a key the config lacks needs '+': a typo is not a new key
        apply_overrides(cfg, ["model.moe.alpha=8"])
    with pytest.raises(KeyError, match="exists already"):
        apply_overrides(cfg, ["+model.lr=2"])
    with pytest.raises(KeyError, match="no 'model.nope' to remove"):
        apply_overrides(cfg, ["~model.nope"])


def test_rows_of_untrained_variants_claim_no_selection(make_cfg, tmp_path):
    rows = run(make_cfg("experiment=source_only_toy", *TINY, "+variants.as_is=['train=false']", "+variants.trained=[]",
                        run_dir=tmp_path / "run"))
    assert {r["selection"] for r in rows if r["variant"] == "as_is"} == {"none (not trained)"}
    assert {r["selection"] for r in rows if r["variant"] == "trained"} == {"source_val"}


def test_sweep_keys_are_zipped_point_by_point(monkeypatch, tmp_path):
    """Several sweep keys give one run per index (e.g. head seed i with pre-training seed i), not their product."""
    from omegaconf import OmegaConf

    import transfer.runner as runner

    seen = []
    monkeypatch.setattr(runner, "run_folds", lambda cfg: seen.append((cfg.seed, cfg.model.pre.seed, cfg.sweep_point)) or [])
    cfg = OmegaConf.create({"seed": 0, "model": {"pre": {"seed": 9}}, "sweep_point": None,
                            "paths": {"output_dir": str(tmp_path), "results_file": str(tmp_path / "r.jsonl")},
                            "sweep": {"seed": [0, 1], "model.pre.seed": [100, 101]}})
    runner.run_sweep(cfg)
    assert seen == [(0, 100, "seed=0,model.pre.seed=100"), (1, 101, "seed=1,model.pre.seed=101")]
    cfg.sweep = {"seed": [0, 1], "model.pre.seed": [100]}
    with pytest.raises(ValueError, match="lists of one length"):
        runner.run_sweep(cfg)


def test_sweep_shards_split_the_points_and_name_them_as_the_whole_sweep_does(monkeypatch, tmp_path):
    """sweep_shard=k/n runs points k, k+n, ...; the shards together are the whole sweep, each point named as in it."""
    from omegaconf import OmegaConf

    import transfer.runner as runner

    seen = []
    monkeypatch.setattr(runner, "run_folds", lambda cfg: seen.append((cfg.seed, cfg.sweep_point)) or [])
    cfg = OmegaConf.create({"seed": 0, "sweep_point": None, "sweep_shard": None,
                            "paths": {"output_dir": str(tmp_path), "results_file": str(tmp_path / "r.jsonl")},
                            "sweep": {"seed": [10, 11, 12, 13, 14]}})
    runner.run_sweep(cfg)
    whole, seen[:] = list(seen), []
    for k in range(2):
        cfg.sweep_shard = f"{k}/2"
        runner.run_sweep(cfg)
    assert seen == whole[0::2] + whole[1::2] and sorted(seen) == sorted(whole)
    for bad, message in [("2/2", "k must be in 0..n-1"), ("5/6", "only 5 points"), ("half", "expected 'k/n'")]:
        cfg.sweep_shard = bad
        with pytest.raises(ValueError, match=message):
            runner.run_sweep(cfg)
    cfg.sweep, cfg.sweep_shard = None, "0/2"
    with pytest.raises(ValueError, match="has no sweep"):
        runner.run_sweep(cfg)
