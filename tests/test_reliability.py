"""Runs an operator can trust: kill -9 and resume gives the same numbers, SIGTERM exits non-zero after saving,
run folders never collide, concurrent writers lose no rows, checkpoints are never left truncated, cached stages
are built once, nothing goes online, and bad CLI input is refused before anything is written."""

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from transfer.checkpoints import AtomicCheckpointIO
from datamodules.files import atomic_write_text
from transfer.records import append_jsonl, read_jsonl
from transfer.stages import cached_stage
from transfer.safeload import CheckpointFileError, load_checkpoint_file

TESTS = Path(__file__).resolve().parent


def _cli(*args, cwd, env=None, timeout=600, pythonpath=(TESTS,)):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def _toy(tmp_path, run: str, *extra, epochs=2, offline=False):
    return _cli("transfer.train", "experiment=source_only_toy", *TINY[:-3], "callbacks=plain", "logger=csv",
                f"trainer.max_epochs={epochs}", f"paths.cache_dir={tmp_path / 'cache'}",
                f"hydra.run.dir={tmp_path / run}", *extra, cwd=tmp_path,
                pythonpath=(TESTS / "offline", TESTS) if offline else (TESTS,))


def _test_rows(run_dir: Path) -> list:
    return [(r["split"], r["target"], r["metrics"]) for r in read_jsonl(run_dir / "results.jsonl")]


# 1 ------------------------------------------------------------------------------------------- exact resume
def test_kill_minus_9_then_resume_is_bit_identical(tmp_path):
    full = _toy(tmp_path, "full", offline=True)  # this one also runs with the network cut off
    assert full.returncode == 0, full.stderr[-2000:]
    # what a person reads: the run folder first and last, no adverts, no known-harmless deprecation warnings
    lines = full.stdout.splitlines()
    assert lines[0] == f"run folder: {tmp_path / 'full'}" and lines[-1].startswith(f"run folder: {tmp_path / 'full'}  (")
    assert "Tip:" not in full.stdout + full.stderr and "LeafSpec" not in full.stderr
    killed = _toy(tmp_path, "killed", "+callbacks.kill._target_=kill_helpers.SignalAtEpoch", "+callbacks.kill.epoch=1")
    assert killed.returncode == -9  # SIGKILL right after epoch 1's checkpoint: nothing else ran
    assert not (tmp_path / "killed" / "results.jsonl").exists()
    resumed = _toy(tmp_path, "resumed", f"ckpt_path={tmp_path / 'killed' / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # it continued in the killed run's folder (the new folder points there) and wrote each row once
    assert (tmp_path / "resumed" / "RESUMED_INTO").read_text().strip() == str(tmp_path / "killed")
    assert _test_rows(tmp_path / "killed") == _test_rows(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_a_repeated_evaluation_replaces_its_rows(tmp_path):
    from transfer.single_run import ROW_IDENTITY

    row = {"experiment": "e", "variant": None, "seed": 0, "fold": None, "sweep_point": None, "split": "test",
           "target": "t", "run_dir": "/r"}
    append_jsonl(tmp_path / "r.jsonl", [{**row, "metrics": {"acc": 0.5}}, {**row, "target": "u", "metrics": {}}],
                 replace=ROW_IDENTITY)
    append_jsonl(tmp_path / "r.jsonl", [{**row, "metrics": {"acc": 0.7}}], replace=ROW_IDENTITY)
    rows = read_jsonl(tmp_path / "r.jsonl")
    assert sorted((r["target"], r["metrics"].get("acc")) for r in rows) == [("t", 0.7), ("u", None)]


# 2 --------------------------------------------------------------------------------------------------- SIGTERM
def test_sigterm_saves_last_checkpoint_and_exits_143(tmp_path):
    res = _toy(tmp_path, "term", "+callbacks.kill._target_=kill_helpers.SignalAtStep", "+callbacks.kill.step=3")
    assert res.returncode == 143, res.stderr[-2000:]
    last = tmp_path / "term" / "checkpoints" / "last.ckpt"
    assert last.exists() and torch.load(last, weights_only=False)["global_step"] == 3
    assert "resume with: python -m transfer.train experiment=source_only_toy" in res.stdout
    assert f"ckpt_path={last}" in res.stdout
    assert not (tmp_path / "term" / "results.jsonl").exists()


def test_slurm_trainer_requeues_through_lightning(make_cfg):
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    cfg = make_cfg("trainer=slurm")
    plugins = [instantiate(p) for p in cfg.trainer.plugins]
    assert isinstance(plugins[0], SLURMEnvironment) and plugins[0].auto_requeue


# 3 ---------------------------------------------------------------------------------------------- run folders
def test_runs_started_together_get_their_own_folders(tmp_path):  # two processes, but not timed: no need to be alone
    cmd = [sys.executable, "-m", "transfer.train", "experiment=source_only_toy", "train=false", "test=false"]
    env = {**os.environ, "TRANSFER_OUTPUT_DIR": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    runs = sorted((tmp_path / "out" / "source_only_toy").iterdir())
    assert len(runs) == 2 and runs[0].name != runs[1].name  # two folders, even when started in the same second


# 4 ----------------------------------------------------------------------------------------- results.jsonl
def _append_many(path: str, worker: int, n: int) -> None:
    for i in range(n):
        append_jsonl(path, [{"worker": worker, "i": i, "pad": "x" * 200}])


def test_concurrent_appends_lose_no_rows_and_files_follow_umask(tmp_path):
    path = str(tmp_path / "results.jsonl")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 300)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    rows = read_jsonl(path)
    assert len(rows) == 900 and len({(r["worker"], r["i"]) for r in rows}) == 900
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        append_jsonl(tmp_path / "b.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.jsonl").stat().st_mode & 0o777 == 0o640


# 5 ------------------------------------------------------------------------------------------- checkpoints
def test_failed_checkpoint_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["epoch"] == 1  # the old checkpoint, intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_truncated_empty_and_garbage_checkpoints_are_named(tmp_path):
    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(CheckpointFileError, match="cut.ckpt: .*truncated or corrupt"):
        load_checkpoint_file(cut)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFileError, match="empty.ckpt: .*empty"):
        load_checkpoint_file(empty)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointFileError, match="garbage.ckpt: not a") as err:
        load_checkpoint_file(garbage)
    assert "weights_only=False" not in str(err.value)


def test_resume_from_a_truncated_checkpoint_stops_with_its_name(tmp_path):
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, tmp_path / "x.ckpt")
    cut = tmp_path / "run0" / "checkpoints" / "last.ckpt"
    cut.parent.mkdir(parents=True)
    cut.write_bytes((tmp_path / "x.ckpt").read_bytes()[:1200])
    res = _toy(tmp_path, "run1", f"ckpt_path={cut}", epochs=1)
    assert res.returncode != 0 and f"{cut}: Lightning checkpoint is truncated or corrupt" in res.stderr
    assert "weights_only=False" not in res.stderr


# 6 --------------------------------------------------------------------------------------------- cached stages
def _slow_build(path: str, log: str) -> None:
    def build():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return {"w": torch.arange(10.0)}

    cached_stage(path, build)
    assert torch.equal(load_checkpoint_file_safetensors(path), torch.arange(10.0))


def test_stage_file_is_keyed_by_settings_and_the_training_code(tmp_path, monkeypatch):
    """Every cached stage names its file through ``stage_file``: other settings or edited training code give another
    file (a stale stage is never read), the cache folder itself does not count."""
    import transfer.stages as stages

    settings = {"steps": 10, "lr": 1e-3, "cache_dir": str(tmp_path / "a")}
    path = stages.stage_file(tmp_path, "stage", settings, code=("transfer.stages",))
    assert path.parent == tmp_path and path.name.startswith("stage-") and path.suffix == ".safetensors"
    assert stages.stage_file(tmp_path, "stage", {**settings, "cache_dir": "elsewhere"}, code=("transfer.stages",)) == path
    assert stages.stage_file(tmp_path, "stage", {**settings, "steps": 11}, code=("transfer.stages",)) != path
    assert stages.stage_file(tmp_path, "stage", settings, code=("transfer.optim",)) != path
    edited = tmp_path / "edited.py"
    edited.write_text(Path(stages.__file__).read_text() + "\n# an edit\n")
    real_import = stages.importlib.import_module
    monkeypatch.setattr(stages.importlib, "import_module",
                        lambda name: type("M", (), {"__file__": str(edited)}) if name == "transfer.stages" else real_import(name))
    assert stages.stage_file(tmp_path, "stage", settings, code=("transfer.stages",)) != path


def test_a_stage_trains_like_its_run_and_is_keyed_by_how(tmp_path):
    """The stage's Trainer takes the run's device type and precision (one process); a stage trained another way is
    another file."""
    import lightning as L

    from transfer.stages import stage_device, stage_file, stage_trainer

    fp32 = L.Trainer(accelerator="cpu", devices=1, logger=False)
    bf16 = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", logger=False)
    assert stage_device(fp32) == stage_device(None) == {"device": "cpu", "precision": "32-true"}
    stage = stage_trainer(bf16, max_steps=3)
    assert stage.precision == "bf16-mixed" and stage.strategy.root_device.type == "cpu" and stage.max_steps == 3
    assert stage.logger is None and not stage.checkpoint_callbacks
    assert stage_file(tmp_path, "s", {"a": 1}, run=fp32) == stage_file(tmp_path, "s", {"a": 1})
    assert stage_file(tmp_path, "s", {"a": 1}, run=bf16) != stage_file(tmp_path, "s", {"a": 1})


def load_checkpoint_file_safetensors(path: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(path)["w"]


def test_cached_stage_is_built_once_by_concurrent_processes(tmp_path):
    path, log = str(tmp_path / "cache" / "stage.safetensors"), str(tmp_path / "builds.log")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_slow_build, args=(path, log)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    assert len(Path(log).read_text().split()) == 1  # first writer wins, the others read its file
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".stage.safetensors.lock", "stage.safetensors"]


# 7 ------------------------------------------------------------------------------------------------- network
def test_clip_constructors_never_go_online(monkeypatch):
    import socket

    from transfer.models.clip import ClipHubError, FrozenClip
    from transfer.weights import WeightsError, load_registry

    def refuse(*a, **k):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    names = [n for n in load_registry() if n.split(".")[0] in ("ViT-B-16", "ViT-B-32", "ViT-L-14")]
    assert names
    for name in names:  # registry weights are absent here: a clear local error, no download
        with pytest.raises(WeightsError, match="place the file at"):
            FrozenClip(name.split(".")[0], name)
    for name in ("ViT-B-16-SigLIP", "roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32"):
        start = time.time()
        with pytest.raises(ClipHubError, match="Hugging Face hub.*HF_HUB_OFFLINE=1"):
            FrozenClip(name)
        assert time.time() - start < 5
    assert FrozenClip("landa-tiny").identity.startswith("landa-tiny")


def test_the_offline_guard_blocks_connections():
    """The guard the kill/resume test and the slow toy tests run under (tests/offline/sitecustomize.py)."""
    blocked = subprocess.run([sys.executable, "-c", "import socket\ns = socket.socket()\ns.connect(('192.0.2.1', 80))"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(TESTS / "offline")})
    assert "network access blocked" in blocked.stderr  # the guard is really in place


# 8 ---------------------------------------------------------------------------------------------- bad CLI input
def test_folds_k_below_two_writes_nothing(tmp_path, capsys):
    import real_fixtures as rf

    from transfer.folds import main as folds_main

    root = rf.sah_datalist(tmp_path, n_patients=3, scans_per_patient=1)
    out = tmp_path / "folds.json"
    for k in ("-2", "0", "1", "x"):
        with pytest.raises(SystemExit, match="k must be at least 2|2"):  # argparse exits 2 on a non-integer
            folds_main(["make", str(root / "datalist.json"), f"--k={k}", "--out", str(out)])
        assert not out.exists()
    assert folds_main(["make", str(root / "datalist.json"), "--k", "2", "--out", str(out)]) == 0 and out.exists()
    old_form = tmp_path / "old.json"  # the 0.1 key=value form still works, with a note
    assert folds_main(["make", f"datalist={root / 'datalist.json'}", "k=2", f"out={old_form}"]) == 0
    assert old_form.read_text() == out.read_text()


def test_wrong_type_fails_at_composition_without_a_run_folder(tmp_path):
    res = _cli("transfer.train", "experiment=source_only_toy", "trainer.max_epochs=abc", f"hydra.run.dir={tmp_path / 'r'}",
               cwd=tmp_path)
    assert res.returncode != 0 and "max_epochs" in res.stderr and "abc" in res.stderr
    assert not (tmp_path / "r").exists()


def test_wrong_types_of_the_run_keys_fail_at_composition(make_cfg):
    from hydra.errors import ConfigCompositionException

    for bad in ("seed=x", "train=maybe", "trainer.devices_=1", "trainer.max_steps=lots", "num_threads=two"):
        with pytest.raises(ConfigCompositionException):
            make_cfg(bad)


def test_eval_with_a_garbage_checkpoint_says_it_is_not_one(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x80\x04garbage" * 100)
    res = _cli("transfer.eval", "experiment=source_only_toy", *TINY[:-3], f"ckpt_path={bad}",
               f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert res.returncode != 0 and f"{bad}: not a" in res.stderr and "weights_only=False" not in res.stderr


def test_building_a_cached_stage_leaves_the_callers_random_state_alone(tmp_path):
    """A stage built on a cache miss (it seeds and trains) and the same stage read from the cache leave the run with
    the same random state, so a result does not depend on what was cached before."""
    import random

    import numpy as np

    from transfer.stages import cached_stage

    def build():
        torch.manual_seed(123)
        np.random.seed(5)
        random.seed(7)
        return {"w": torch.randn(3) + float(np.random.rand()) + random.random()}

    def draw():
        return torch.rand(2).tolist(), float(np.random.rand()), random.random()

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    cached_stage(tmp_path / "stage.safetensors", build)  # miss: built
    after_miss = draw()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    cached_stage(tmp_path / "stage.safetensors", build)  # hit: read
    assert draw() == after_miss
