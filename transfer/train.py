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
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf, open_dict

from transfer import experiments
from transfer.checkpoints import AtomicCheckpointIO
from transfer.collect import select_variants, write_tables  # noqa: F401 (select_variants: part of this module's face)
from transfer.data import DataSummaryWriter
from transfer.fetch import fetch_on_first_use
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
    if cfg.selection.get("monitor") is None:  # nothing to select on: the last checkpoint is the selected one
        callbacks = [c for c in callbacks if not (isinstance(c, ModelCheckpoint) and c.monitor is None
                                                  and c.filename != "last")]
    callbacks.append(DataSummaryWriter(Path(cfg.paths.output_dir) / "data_summary.json"))
    loggers = _instantiate_group(cfg.get("logger"))
    plugins = [instantiate(p) for p in (cfg.trainer.get("plugins") or [])] + [AtomicCheckpointIO()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    if hasattr(datamodule, "train_seed"):
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
    pooled = getattr(model, "pooled_val_target", "source")  # what un-targeted val keys (val/acc) describe
    rows = rows_from_metrics(metrics, split="val", base=base, pooled_target=pooled)
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


def _variant_overrides(cfg: DictConfig) -> dict[str, list[str]]:
    """``variants`` ({name: [dotlist]}), crossed with ``scenarios`` when given: names ``scenario/variant``.
    An item ``@name`` expands to the dotlist ``override_sets.name``."""
    sets = cfg.get("override_sets") or {}

    def expand(dotlist) -> list[str]:  # "@name" stands for the list override_sets.name
        out = []
        for item in dotlist or []:
            if item.startswith("@"):
                if item[1:] not in sets:
                    raise KeyError(f"variant uses {item}, but override_sets has no '{item[1:]}' (has: {list(sets)})")
                out += list(sets[item[1:]])
            else:
                out.append(item)
        return out

    variants = {k: expand(v) for k, v in (cfg.get("variants") or {}).items()}
    scenarios = {k: expand(v) for k, v in (cfg.get("scenarios") or {}).items()}
    if not scenarios:
        return variants
    return {f"{s}/{v}": s_over + v_over for s, s_over in scenarios.items() for v, v_over in (variants or {"": []}).items()}


def run(cfg: DictConfig) -> list[dict]:
    """One run, or each variant in turn (baselines beside a method; ``scenarios`` x ``variants``), each over
    the ``sweep`` values (e.g. shot seeds); then a comparison, mean +- std over the sweep."""
    overrides = _variant_overrides(cfg)
    if not overrides:
        return run_sweep(cfg)
    out = Path(cfg.paths.output_dir)
    results_file = str(cfg.paths.results_file)
    rows = []
    for name, dotlist in overrides.items():
        sub = cfg.copy()
        with open_dict(sub):
            sub.variants, sub.scenarios, sub.variant = None, None, name
            sub.paths.output_dir, sub.paths.results_file = str(out / name), results_file
        sub = OmegaConf.merge(sub, OmegaConf.from_dotlist(dotlist))
        log.info("variant %s: %s", name, " ".join(dotlist) or "(the experiment as is)")
        rows += run_sweep(sub)
    return write_tables(rows, out, [out], cfg.get("select"), cfg.selection.protocol, cfg.get("report_metrics"))


def run_sweep(cfg: DictConfig) -> list[dict]:
    """``sweep: {key: [values]}``: the run once per value (e.g. ``data.shot_seed: [0, 1, 2]``). Several keys with
    lists of one length are zipped, point i taking the i-th value of each (e.g. head seed and pre-training seed)."""
    sweep = cfg.get("sweep")
    if not sweep:
        return run_folds(cfg)
    keys = list(sweep)
    lengths = {k: len(sweep[k]) for k in keys}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"sweep keys are zipped point by point and need lists of one length, got {lengths}; "
                         f"cross values with variants or scenarios instead")
    out, rows = Path(cfg.paths.output_dir), []
    for values in zip(*(sweep[k] for k in keys)):
        point = ",".join(f"{k}={v}" for k, v in zip(keys, values))
        sub = cfg.copy()
        with open_dict(sub):
            sub.sweep, sub.sweep_point = None, point
            sub.paths.output_dir, sub.paths.results_file = str(out / point), str(cfg.paths.results_file)
        for k, v in zip(keys, values):
            OmegaConf.update(sub, k, v, force_add=True)
        rows += run_folds(sub)
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
    with fetch_on_first_use(bool(cfg.get("weights", {}).get("fetch"))):  # weights.fetch=true: download what is missing
        return _run_one(_continue_in_checkpoint_run(cfg))


def _run_one(cfg: DictConfig) -> list[dict]:
    datamodule, model, trainer = build(cfg)
    if trainer.is_global_zero and HydraConfig.initialized():
        atomic_write_text(Path(cfg.paths.output_dir) / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if hasattr(model, "prepare"):  # stages a method needs before fitting (cached), e.g. a toy's pre-training
        datamodule.prepare_data()  # idempotent; every process may run it (writes are atomic)
        model.prepare(datamodule)
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


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
