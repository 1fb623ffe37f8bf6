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
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf, open_dict

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
        "selection": cfg.selection.protocol,
        "checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
        "git_commit": git_commit(),
        "run_dir": str(Path(cfg.paths.output_dir).resolve()),
    }
    pooled = getattr(model, "pooled_val_target", "source")  # what un-targeted val keys (val/acc) describe
    rows = rows_from_metrics(metrics, split="val", base=base, pooled_target=pooled)
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
    """One run, or — when the experiment lists ``variants`` — each variant in turn, then a comparison."""
    if not cfg.get("variants"):
        return run_folds(cfg)
    out = Path(cfg.paths.output_dir)
    results_file = str(cfg.paths.results_file)
    rows = []
    for name, overrides in cfg.variants.items():
        sub = cfg.copy()
        with open_dict(sub):
            sub.variants, sub.variant = None, name
            sub.paths.output_dir, sub.paths.results_file = str(out / name), results_file
        sub = OmegaConf.merge(sub, OmegaConf.from_dotlist(list(overrides or [])))
        log.info("variant %s: %s", name, " ".join(overrides or []) or "(the experiment as is)")
        rows += run_folds(sub)
    if rows:
        print_comparison(rows)
    if any(out.rglob("per_case.csv")):
        from transfer.report import build_report

        print(build_report([out], out / "report"))
    return rows


def run_folds(cfg: DictConfig) -> list[dict]:
    """``fold=all`` (or ``folds=all``): every fold in turn from the same pre-trained start, then the pooled cases."""
    if cfg.get("fold") != "all" and cfg.get("folds") != "all":
        return run_one(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    out, rows = Path(cfg.paths.output_dir), []
    for i in range(datamodule.num_folds):
        sub = cfg.copy()
        with open_dict(sub):
            sub.fold, sub.data.fold = i, i
            sub.paths.output_dir, sub.paths.results_file = str(out / f"fold_{i}"), str(cfg.paths.results_file)
        rows += run_one(sub)
    parts = [out / f"fold_{i}" / "per_case.csv" for i in range(datamodule.num_folds)]
    if all(p.exists() for p in parts):
        from transfer.metrics.clinical import cases_from_csv, cases_to_csv

        cases = [c for p in parts for c in cases_from_csv(p.read_text())]
        atomic_write_text(out / "per_case.csv", cases_to_csv(cases))
    return rows


def print_comparison(rows: list[dict]) -> None:
    print(f"\n{'variant':<16} {'fold':<5} {'target':<14} metrics (split test)")
    for r in rows:
        if r["split"] == "test":
            shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(r["metrics"].items()))
            fold = "-" if r.get("fold") is None else str(r["fold"])
            print(f"{r.get('variant') or '-':<16} {fold:<5} {r['target']:<14} {shown}")


def run_one(cfg: DictConfig) -> list[dict]:
    datamodule, model, trainer = build(cfg)
    if trainer.is_global_zero and HydraConfig.initialized():
        atomic_write_text(Path(cfg.paths.output_dir) / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if hasattr(model, "prepare"):  # stages a method needs before fitting (cached), e.g. a toy's pre-training
        datamodule.prepare_data()  # idempotent; every process may run it (writes are atomic)
        model.prepare(datamodule)
    ckpt = cfg.get("ckpt_path")
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        final = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(final, weights_only=False)  # the state at the end of training, whatever the callbacks' schedule
        ckpt = selected_checkpoint(trainer, cfg.selection.monitor) if cfg.selection.monitor else str(final)
    if not cfg.get("test", True):
        return []
    return evaluate(cfg, trainer, model, datamodule, ckpt)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
