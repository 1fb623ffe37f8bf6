"""Cluster sweeps through Hydra's submitit launcher: ``-m hydra/launcher=submitit_local ... fold=0,1,2`` runs one
real subprocess job per fold, each writing its own rows; the report over the sweep folder equals the one of
``fold=all`` in one process. (Multi-node DDP over two torchrun "nodes" is in test_train.py's DDP test.)"""

import pytest

from conftest import cli
from transfer.records import read_jsonl
from transfer.report import build_report

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

TINY_SAH = ["experiment=sah_toy", "variants=null", "model.strategy=full", "data.n_source=6", "data.n_target=6",
            "data.size=16", "model.net.channels=[4,8]", "model.net.strides=[2]", "model.pretrain.steps=3",
            "trainer.max_steps=3", "callbacks=plain"]


@pytest.mark.slow  # four real job processes (~50 s): kept out of the default suite's budget; shares the cores
def test_submitit_local_fold_sweep_equals_fold_all(tmp_path):
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    sweep = cli("transfer.train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=15", *TINY_SAH,
                cache, "fold=0,1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 3 and all((j / "results.jsonl").exists() for j in jobs)  # each job its own rows
    assert sorted(r["fold"] for j in jobs for r in read_jsonl(j / "results.jsonl")) == [0, 1, 2]
    single = cli("transfer.train", *TINY_SAH, cache, "fold=all", f"hydra.run.dir={tmp_path / 'all'}", cwd=tmp_path,
                 timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    from_sweep = build_report([tmp_path / "sweep"], tmp_path / "r1")
    from_all = build_report([tmp_path / "all"], tmp_path / "r2")
    assert from_sweep == from_all and "| sah_toy | 6 |" in from_sweep
