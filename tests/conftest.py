import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from transfer import experiments  # noqa: E402

torch.set_num_threads(1)
experiments.register()  # experiment=NAME in composed configs, as the entry points do before Hydra starts

# A tiny version of the toy: 8 images per class and domain, 2 epochs, a 3k-parameter timm test net.
TINY = [
    "data.per_class=8",
    "data.size=16",
    "data.batch_size=8",
    "model.backbone=test_resnet",
    "trainer.max_epochs=2",
    "callbacks=plain",
    "logger=csv",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "both_cores: keeps two processes busy from start to end (a sweep in two "
                            "shards); its file is scheduled last")


@pytest.hookimpl(trylast=True)  # after -m has deselected: counts the tests that will run
def pytest_collection_modifyitems(config, items):
    """The order in which pytest-xdist hands out files (``--no-loadscope-reorder`` keeps it): files with more tests
    first, as xdist's own reordering does, and last the files of ``both_cores`` tests. Such a test fills both cores
    by itself, so as the last job it runs while the other worker finishes its last file, and no core idles.

    Tests that start several processes (DDP, concurrent runs) share the cores with the other worker: making one
    wait to have the machine alone idles a core for as long as the other worker's test takes (minutes in the slow
    suite), while sharing only slows each process a little."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    last = lambda group: any(i.get_closest_marker("both_cores") for i in group)  # noqa: E731
    items[:] = [i for group in sorted(files.values(), key=lambda g: (last(g), -len(g))) for i in group]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """Compose the real configs as `python -m transfer.train` would, with the run dir in tmp_path."""

    yield lambda *overrides, config_name="train", run_dir=None: compose_config(
        overrides, run_dir or tmp_path / "run", cache_dir, config_name)
    GlobalHydra.instance().clear()


def compose_config(overrides, run_dir: Path, cache_dir: Path, config_name: str = "train"):
    """The composed config with Hydra's runtime set, as the entry point sees it (also for module-scoped fixtures)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="transfer.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
        cfg.paths.cache_dir = str(cache_dir)
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path, timeout: int = 600, offline: bool = False) -> subprocess.CompletedProcess:
    """``python -m <args>`` in a fresh process (one intra-op thread), output captured; ``offline``: any connection
    outside the loopback range fails (``tests/offline/sitecustomize.py``)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_child_env(offline))


def _child_env(offline: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if offline:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "offline"), env.get("PYTHONPATH", "")])
    return env


def run_toy(name: str, tmp_path: Path, *overrides: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """A whole toy experiment from the CLI with the network cut off, its run dir at ``tmp_path/run`` and its
    cache at ``tmp_path/cache``."""
    return cli("transfer.train", f"experiment={name}", *overrides, f"hydra.run.dir={tmp_path / 'run'}",
               f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path, timeout=timeout, offline=True)


def run_toy_shards(name: str, tmp_path: Path, *overrides: str, shards: int = 2, timeout: int = 1200) -> list[tuple]:
    """A toy's sweep split over ``shards`` processes side by side (``sweep_shard=k/n``; one intra-op thread each,
    so on 2 cores two shards take about the time of one), run dirs ``tmp_path/run_k``, one shared cache.
    Returns each shard's (run dir, return code, stderr)."""
    env = _child_env(offline=True)
    procs = []
    for k in range(shards):
        run_dir, log = tmp_path / f"run_{k}", open(tmp_path / f"shard_{k}.stderr", "w+")
        cmd = [sys.executable, "-m", "transfer.train", f"experiment={name}", *overrides, f"sweep_shard={k}/{shards}",
               f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
        procs.append((run_dir, log, subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log)))
    out = []
    try:
        for run_dir, log, proc in procs:
            proc.wait(timeout=timeout)
            log.seek(0)
            out.append((run_dir, proc.returncode, log.read()))
    finally:
        for _, log, proc in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    return out
