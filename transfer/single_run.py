"""One run: build the datamodule, method and Trainer from the config, fit, select a checkpoint, evaluate, record.

Many runs (variants, scenarios, sweeps, folds) are :mod:`transfer.runner`'s job; the command line is
:mod:`transfer.train`'s."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf, open_dict

from transfer.checkpoints import AtomicCheckpointIO
from transfer.records import write_summary
from datamodules.contract import check_data_module
from transfer.methods.base import check_method
from transfer.optim import plain_specs
from transfer.quiet import quiet_third_party
from datamodules.files import atomic_write_text
from transfer.records import append_jsonl, git_commit, rows_from_metrics

log = logging.getLogger("transfer")


class DataSummaryWriter(L.Callback):
    """Writes ``data_summary.json`` once the datamodule is set up (rank 0)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and trainer.datamodule is not None:
            write_summary(trainer.datamodule, self.path)


def _instantiate_group(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(c) for c in node.values() if c is not None and "_target_" in c]


def build(cfg: DictConfig):
    """Instantiate the datamodule, the method, and the Trainer (with callbacks and loggers)."""
    quiet_third_party()
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(plain_specs(cfg.model), _convert_="all")
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if cfg.selection.get("monitor") is None:  # nothing to select on: the last checkpoint is the selected one
        callbacks = [c for c in callbacks if not (isinstance(c, ModelCheckpoint) and c.monitor is None
                                                  and c.filename != "last")]
    callbacks.append(DataSummaryWriter(Path(cfg.paths.output_dir) / "data_summary.json"))
    loggers = _instantiate_group(cfg.get("logger"))
    plugins = [instantiate(p) for p in (cfg.trainer.get("plugins") or [])] + [AtomicCheckpointIO()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    check_data_module(datamodule)
    check_method(model)
    datamodule.train_seed = int(cfg.seed)  # the training order is a function of (seed, epoch): exact resume
    return datamodule, model, trainer


def selected_checkpoint(trainer: L.Trainer, monitor: str) -> str:
    """The best checkpoint on ``monitor`` (the selection protocol's metric)."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor == monitor and cb.best_model_path:
            return cb.best_model_path
    raise RuntimeError(f"no checkpoint was saved on '{monitor}': is it logged by this method, and is "
                       f"validation run (trainer.limit_val_batches > 0)?")


def evaluate(cfg: DictConfig, trainer: L.Trainer, model, datamodule, ckpt: str | None) -> list[dict]:
    """Score ``ckpt`` on the validation and test splits; rank 0 appends one row per target to results.jsonl."""
    metrics: dict[str, float] = {}
    stages = [trainer.test]
    if is_overridden("validation_step", model) and is_overridden("val_dataloader", datamodule):
        stages.insert(0, trainer.validate)
    for stage in stages:
        stage(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    base = {
        "experiment": cfg.experiment_name,
        "method": cfg.get("method"),
        "variant": cfg.get("variant"),
        "seed": cfg.seed,
        "fold": cfg.get("fold"),
        "sweep_point": cfg.get("sweep_point"),
        "selection": cfg.selection.protocol if cfg.get("train", True) else "none (not trained)",
        "selection_reads_target_labels": bool(cfg.selection.get("reads_target_labels")) if cfg.get("train", True) else False,
        "checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
        "git_commit": git_commit(),
        "run_dir": str(Path(cfg.paths.output_dir).resolve()),
    }
    random_init = [n or type(model).__name__ for n, m in model.named_modules() if getattr(m, "random_init", False)]
    if random_init:
        base["random_init"] = random_init  # weights=random, asked for: the rows say so
    rows = rows_from_metrics(metrics, split="val", base=base, pooled_target=model.pooled_val_target)
    rows += rows_from_metrics(metrics, split="test", base=base, pooled_target="all_targets")
    if trainer.is_global_zero:  # a repeated or resumed evaluation replaces its rows, never duplicates them
        append_jsonl(cfg.paths.results_file, rows, replace=ROW_IDENTITY)
        print_rows(rows)
    return rows


ROW_IDENTITY = ("experiment", "variant", "seed", "fold", "sweep_point", "split", "target", "run_dir")


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'split':<6} {'target':<16} metrics")
    for r in rows:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(r["metrics"].items()))
        print(f"{r['split']:<6} {r['target']:<16} {shown}")


def _continue_in_checkpoint_run(cfg: DictConfig) -> DictConfig:
    """Resuming from ``<run>/checkpoints/last.ckpt`` continues in ``<run>``: same checkpoints, logs and results
    file. The new Hydra folder keeps a note pointing there."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not cfg.get("train", True):
        return cfg
    ckpt = Path(ckpt).resolve()
    run_dir, here = ckpt.parent.parent, Path(cfg.paths.output_dir).resolve()
    if ckpt.parent.name != "checkpoints" or not (run_dir / "config_resolved.yaml").exists() or run_dir == here:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        if Path(cfg.paths.results_file).resolve() == here / "results.jsonl":
            cfg.paths.results_file = str(run_dir / "results.jsonl")
        cfg.paths.output_dir = str(run_dir)
    atomic_write_text(here / "RESUMED_INTO", f"{run_dir}\n")
    log.info("resuming %s: continuing in %s", ckpt, run_dir)
    return cfg


def _resume_command(cfg: DictConfig, ckpt: Path) -> str:
    task = [o for o in (HydraConfig.get().overrides.task if HydraConfig.initialized() else [])
            if not o.startswith("ckpt_path=")]
    return " ".join(["python -m transfer.train", *task, f"ckpt_path={ckpt}"])


def run_one(cfg: DictConfig) -> list[dict]:
    cfg = _continue_in_checkpoint_run(cfg)
    datamodule, model, trainer = build(cfg)
    if trainer.is_global_zero and HydraConfig.initialized():
        atomic_write_text(Path(cfg.paths.output_dir) / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if model.has_stages:  # stages a method needs before fitting (cached), e.g. a toy's pre-training
        datamodule.prepare_data()  # idempotent; every process may run it (writes are atomic)
        model.prepare(datamodule, trainer)  # a stage trains on the run's device type and precision
    ckpt = cfg.get("ckpt_path")
    if cfg.get("train", True):
        final = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        except SIGTERMException:  # a scheduler's stop: keep the state, say how to go on, exit non-zero
            trainer.save_checkpoint(final, weights_only=False)
            print(f"\nstopped by SIGTERM; state saved to {final}\nresume with: {_resume_command(cfg, final)}",
                  flush=True)
            raise SystemExit(143) from None
        trainer.save_checkpoint(final, weights_only=False)  # the state at the end of training, whatever the callbacks' schedule
        ckpt = selected_checkpoint(trainer, cfg.selection.monitor) if cfg.selection.monitor else str(final)
    if not cfg.get("test", True):
        return []
    return evaluate(cfg, trainer, model, datamodule, ckpt)
