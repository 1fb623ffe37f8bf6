"""``python -m transfer.train experiment=NAME [overrides]``: fit, select a checkpoint, evaluate, record."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from transfer import experiments
from transfer.records import append_jsonl, atomic_write_text, git_commit, rows_from_metrics

log = logging.getLogger("transfer")
experiments.register()


def _instantiate_group(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(c) for c in node.values() if c is not None and "_target_" in c]


def build(cfg: DictConfig):
    """Instantiate the datamodule, the method, and the Trainer (with callbacks and loggers)."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def selected_checkpoint(trainer: L.Trainer, monitor: str | None) -> str | None:
    """The checkpoint the selection protocol picked: best on ``monitor``, else the latest one."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if monitor:
        for cb in callbacks:
            if cb.monitor == monitor and cb.best_model_path:
                return cb.best_model_path
        raise RuntimeError(f"no checkpoint was saved on '{monitor}': is it logged by this method?")
    latest = [cb for cb in callbacks if cb.monitor is None and cb.best_model_path]
    latest.sort(key=lambda cb: cb.filename != "last")
    return latest[0].best_model_path if latest else None


def evaluate(cfg: DictConfig, trainer: L.Trainer, model, datamodule, ckpt: str | None) -> list[dict]:
    """Score ``ckpt`` on the validation and test splits; rank 0 appends one row per target to results.jsonl."""
    metrics: dict[str, float] = {}
    for stage in (trainer.validate, trainer.test):
        stage(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    base = {
        "experiment": cfg.experiment_name,
        "method": cfg.get("method"),
        "seed": cfg.seed,
        "fold": cfg.get("fold"),
        "selection": cfg.selection.protocol,
        "checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
        "git_commit": git_commit(),
        "run_dir": str(Path(cfg.paths.output_dir).resolve()),
    }
    rows = rows_from_metrics(metrics, split="val", base=base, pooled_target="source")
    rows += rows_from_metrics(metrics, split="test", base=base, pooled_target="all_targets")
    if trainer.is_global_zero:
        append_jsonl(cfg.paths.results_file, rows)
        print_rows(rows)
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'split':<6} {'target':<16} metrics")
    for r in rows:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(r["metrics"].items()))
        print(f"{r['split']:<6} {r['target']:<16} {shown}")


def run(cfg: DictConfig) -> list[dict]:
    datamodule, model, trainer = build(cfg)
    if trainer.is_global_zero and HydraConfig.initialized():
        atomic_write_text(Path(cfg.paths.output_dir) / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    ckpt = cfg.get("ckpt_path")
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        ckpt = selected_checkpoint(trainer, cfg.selection.monitor)
    if not cfg.get("test", True):
        return []
    return evaluate(cfg, trainer, model, datamodule, ckpt)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
