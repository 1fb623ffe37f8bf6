"""Expose the top-level ``experiments/*.yaml`` files as Hydra's config group ``experiment``.

Hydra names a group after its directory, so a folder ``experiments/`` outside the package cannot be a
group called ``experiment`` through the search path. Each file is instead stored in the ConfigStore
(package ``_global_``), which keeps its ``defaults: [override /group: option]`` lines working. The
folder is looked up in this order: ``$TRANSFER_EXPERIMENTS_DIR``, the source checkout that holds this
package, then the copy that ``pip install .`` places under ``<prefix>/share/transfer/experiments``.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

ENV_VAR = "TRANSFER_EXPERIMENTS_DIR"


def candidate_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]))
    dirs.append(Path(__file__).resolve().parent.parent / "experiments")
    dirs.append(Path(sys.prefix) / "share" / "transfer" / "experiments")
    return dirs


def experiments_dir() -> Path:
    for d in candidate_dirs():
        if d.is_dir() and any(d.glob("*.yaml")):
            return d
    raise FileNotFoundError(
        "no experiments folder found; looked in " + ", ".join(str(d) for d in candidate_dirs())
        + f". Set {ENV_VAR} to the folder that holds the experiment YAML files."
    )


def available() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def register() -> Path:
    """Store every experiment file under group ``experiment``; returns the folder used. Also registers the
    resolvers ``label_space`` (null -> ``all``, K -> ``known<K>``; names exported SFDA source models) and
    ``run_suffix`` (random, once per run: unique run folders)."""
    OmegaConf.register_new_resolver("label_space", lambda n: f"known{n}" if n else "all", replace=True)
    # run folders: a timestamp to the second + 6 random hex digits, so runs started together never share one
    if not OmegaConf.has_resolver("run_suffix"):
        OmegaConf.register_new_resolver("run_suffix", lambda: secrets.token_hex(3), use_cache=True)
    from transfer.schemas import register as register_schemas

    register_schemas()
    folder = experiments_dir()
    store = ConfigStore.instance()
    for path in sorted(folder.glob("*.yaml")):
        node = OmegaConf.load(path)
        node.experiment_name = path.stem
        store.store(group="experiment", name=path.stem, node=node, package="_global_")
    return folder
