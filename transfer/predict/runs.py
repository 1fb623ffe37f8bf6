"""A finished training run, read back for prediction: its folds, the checkpoint each selected, its models.

A run folder is what ``python -m transfer.train`` wrote: ``config_resolved.yaml`` and ``checkpoints/`` for one run,
or ``fold_<i>/`` folders with those for ``fold=all``; the rows of ``results.jsonl`` name the checkpoint each fold's
selection protocol chose (``null`` for a run evaluated untrained, e.g. strategy ``none``). A moved or copied run
folder still works: a recorded path under the old folder is read under the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from transfer.records import read_jsonl


class RunError(RuntimeError):
    """The run folder cannot be applied as it is; the message names what is missing."""


@dataclass
class Fold:
    index: int | None
    folder: Path
    cfg: DictConfig
    checkpoint: Path | None
    row: dict
    val_metrics: dict
    classes: list[str] | None


def _config(folder: Path) -> DictConfig:
    return OmegaConf.load(folder / "config_resolved.yaml")


def _results_file(folder: Path, cfg: DictConfig) -> Path | None:
    recorded = cfg.get("paths", {}).get("results_file")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    for parent in [folder, *folder.parents][:4]:
        if (parent / "results.jsonl").is_file():
            return parent / "results.jsonl"
    return None


def _selected_row(folder: Path, cfg: DictConfig, split: str = "test") -> dict:
    results = _results_file(folder, cfg)
    if results is None:
        raise RunError(f"{folder}: no results.jsonl beside or above it: did this run finish its evaluation?")
    rows = [r for r in read_jsonl(results) if r.get("split") == split]
    here = [r for r in rows if r.get("run_dir") and Path(r["run_dir"]).resolve() == folder.resolve()]
    if not here:  # a moved folder: the same run by its identity
        ident = {k: cfg.get(k) for k in ("experiment_name", "variant", "seed", "fold", "sweep_point")}
        here = [r for r in rows if r.get("experiment") == ident["experiment_name"] and
                all(r.get(k) == ident[k] for k in ("variant", "seed", "fold", "sweep_point"))]
    if not here and split != "test":
        return {}
    if not here:
        raise RunError(f"{folder}: {results} has no test row for this run: did its training and evaluation finish?")
    return here[-1]


def _checkpoint(folder: Path, row: dict) -> Path | None:
    ckpt = row.get("checkpoint")
    if not ckpt:
        return None
    path = Path(ckpt)
    recorded = row.get("run_dir")
    if recorded and Path(recorded).resolve() != folder.resolve():  # a moved or copied run: its own checkpoint
        with contextlib.suppress(ValueError):
            path = folder / path.relative_to(recorded)
    if not path.is_file():
        raise RunError(f"{folder}: the checkpoint its selection chose, {ckpt}, is missing (looked for {path})")
    return path


def read_run(run_dir: str | Path, folds: list[int] | None = None) -> list[Fold]:
    """The run's folds (all, or ``folds``), each with its config and selected checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    if (run_dir / "config_resolved.yaml").is_file():
        units = [(None, run_dir)]
    else:
        units = sorted(((int(p.name.split("_", 1)[1]), p) for p in run_dir.glob("fold_*")
                        if p.name.split("_", 1)[1].isdigit() and (p / "config_resolved.yaml").is_file()))
    if not units:
        inner = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and any(p.rglob("config_resolved.yaml")))
        hint = f"; it holds runs {', '.join(inner[:6])}: pass one of those folders" if inner else ""
        raise RunError(f"{run_dir}: not a training run folder (no config_resolved.yaml, no fold_<i>/){hint}")
    if folds is not None:
        have = [i for i, _ in units]
        unknown = [f for f in folds if f not in have]
        if unknown:
            raise RunError(f"{run_dir}: no fold {unknown[0]} (the run has folds {have})")
        units = [(i, p) for i, p in units if i in folds]
    out = []
    for index, folder in units:
        cfg = _config(folder)
        row = _selected_row(folder, cfg)
        summary = folder / "data_summary.json"
        classes = json.loads(summary.read_text()).get("classes") if summary.is_file() else None
        out.append(Fold(index, folder, cfg, _checkpoint(folder, row), row,
                        _selected_row(folder, cfg, "val").get("metrics", {}), classes))
    return out


@contextlib.contextmanager
def launch_dir(folder: Path) -> Iterator[None]:
    """Relative paths in a run's config (data, cache) meant the folder training was launched from: Hydra records
    it in ``.hydra/hydra.yaml`` at the run's top; work from there while the config is used."""
    for parent in [folder, *folder.parents][:5]:
        hydra_file = parent / ".hydra" / "hydra.yaml"
        if hydra_file.is_file():
            cwd = OmegaConf.load(hydra_file).hydra.runtime.get("cwd")
            if cwd and Path(cwd).is_dir():
                here = os.getcwd()
                os.chdir(cwd)
                try:
                    yield
                finally:
                    os.chdir(here)
                return
    yield


def load_model(fold: Fold, datamodule, data_prepared: bool = False):
    """The fold's LightningModule at its selected weights, in eval mode. ``datamodule``: the run's, constructed
    (not set up). A method with a cached stage (a toy's pre-training) runs its ``prepare`` first, as training did,
    and adapter-only checkpoints load onto that base; a method whose parts are sized by its data (LanDA's heads,
    its text embeddings) is attached to the data module before its checkpoint loads."""
    from hydra.utils import instantiate

    from transfer.checkpoints import AtomicCheckpointIO
    from transfer.methods.base import check_method
    from transfer.optim import plain_specs

    ckpt = AtomicCheckpointIO().load_checkpoint(fold.checkpoint) if fold.checkpoint is not None else None
    extra = {}
    trained = (ckpt or {}).get("hyper_parameters") or {}
    if fold.cfg.model.get("num_classes") is None and trained.get("num_classes") is not None:
        extra["num_classes"] = trained["num_classes"]  # a model sized by its data at training time
    with launch_dir(fold.folder):
        model = instantiate(plain_specs(fold.cfg.model), _convert_="all", **extra)
        check_method(model)
        if model.has_stages:
            if not data_prepared:  # once per data module, not once per fold
                datamodule.prepare_data()
            model.prepare(datamodule)
        model.attach_data(datamodule)
    if ckpt is not None:
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
    return model.eval().requires_grad_(False)  # predictions run under no_grad; the caller's grad mode is left alone
