"""Many runs from one config: each variant (baselines beside a method), crossed with scenarios; each sweep point
(zipped keys); each fold (``fold=all``); then the comparison tables (:func:`transfer.collect.write_tables`)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from transfer.collect import print_comparison, write_tables
from transfer.preflight import prefetch
from transfer.single_run import run_one

log = logging.getLogger("transfer")


def variant_overrides(cfg: DictConfig) -> dict[str, list[str]]:
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


_ABSENT = object()


def apply_overrides(cfg: DictConfig, dotlist: list[str]) -> DictConfig:
    """A variant's overrides, read like the command line's: ``key=value`` changes a key the config has (a typo is
    an error), ``+key=value`` adds one, ``~key`` removes one. ``cfg`` itself is left as it was."""
    cfg = cfg.copy()
    for item in dotlist:
        if item.startswith("~"):
            key = item[1:].split("=", 1)[0]
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is None or leaf not in node:
                raise KeyError(f"variant override {item}: the config has no '{key}' to remove")
            with open_dict(node):
                del node[leaf]
        elif item.startswith("+"):
            key = item[1:].split("=", 1)[0]
            if OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
                raise KeyError(f"variant override {item}: '{key}' exists already; drop the '+' to change it")
            OmegaConf.update(cfg, key, OmegaConf.select(OmegaConf.from_dotlist([item[1:]]), key), force_add=True)
        else:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    return cfg


def run(cfg: DictConfig) -> list[dict]:
    """One run, or each variant in turn (baselines beside a method; ``scenarios`` x ``variants``), each over
    the ``sweep`` values (e.g. shot seeds); then a comparison, mean +- std over the sweep."""
    out = Path(cfg.paths.output_dir)
    prefetch(cfg)  # weights.fetch=true: every missing registered file, before anything is built
    say(f"run folder: {out}")
    rows = _run(cfg, out)
    say(f"\nrun folder: {out}  (results.jsonl: every row; data_summary.json: what was read; checkpoints/)")
    return rows


def say(text: str) -> None:
    if rank_zero_only.rank == 0:
        print(text, flush=True)


def _run(cfg: DictConfig, out: Path) -> list[dict]:
    overrides = variant_overrides(cfg)
    if not overrides:
        rows = run_sweep(cfg)
        if len({(r.get("sweep_point"), r.get("fold")) for r in rows}) > 1 and rank_zero_only.rank == 0:
            print_comparison(rows, cfg.get("report_metrics"))  # mean +- std over the sweep points and folds
        return rows
    results_file = str(cfg.paths.results_file)
    rows = []
    for name, dotlist in overrides.items():
        sub = cfg.copy()
        with open_dict(sub):
            sub.variants, sub.scenarios, sub.variant = None, None, name
            sub.paths.output_dir, sub.paths.results_file = str(out / name), results_file
        sub = apply_overrides(sub, dotlist)
        log.info("variant %s: %s", name, " ".join(dotlist) or "(the experiment as is)")
        rows += run_sweep(sub)
    return write_tables(rows, out, [out], cfg.get("select"), cfg.selection.protocol, cfg.get("report_metrics"))


def run_sweep(cfg: DictConfig) -> list[dict]:
    """``sweep: {key: [values]}``: the run once per value (e.g. ``data.shot_seed: [0, 1, 2]``). Several keys with
    lists of one length are zipped, point i taking the i-th value of each (e.g. head seed and pre-training seed)."""
    sweep = cfg.get("sweep")
    if not sweep:
        if cfg.get("sweep_shard") is not None:
            raise ValueError(f"sweep_shard={cfg.sweep_shard} but this experiment has no sweep")
        return run_folds(cfg)
    keys = list(sweep)
    lengths = {k: len(sweep[k]) for k in keys}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"sweep keys are zipped point by point and need lists of one length, got {lengths}; "
                         f"cross values with variants or scenarios instead")
    points = list(zip(*(sweep[k] for k in keys)))
    if cfg.get("sweep_shard") is not None:
        index, count = parse_shard(cfg.sweep_shard, len(points))
        points = points[index::count]
        log.info("sweep_shard %s: %d of %d sweep points", cfg.sweep_shard, len(points), lengths[keys[0]])
    out, rows = Path(cfg.paths.output_dir), []
    for values in points:
        point = ",".join(f"{k}={v}" for k, v in zip(keys, values))
        sub = cfg.copy()
        with open_dict(sub):
            sub.sweep, sub.sweep_point = None, point
            sub.paths.output_dir, sub.paths.results_file = str(out / point), str(cfg.paths.results_file)
        for k, v in zip(keys, values):
            OmegaConf.update(sub, k, v, force_add=True)
        rows += run_folds(sub)
    return rows


def parse_shard(shard, num_points: int) -> tuple[int, int]:
    """``"k/n"`` (0 <= k < n): points k, k + n, k + 2n, ... of the sweep, so n processes share one sweep."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not match:
        raise ValueError(f"sweep_shard={shard!r}: expected 'k/n', e.g. sweep_shard=0/2 and sweep_shard=1/2")
    index, count = int(match[1]), int(match[2])
    if not 0 <= index < count:
        raise ValueError(f"sweep_shard={shard!r}: k must be in 0..n-1")
    if index >= num_points:
        raise ValueError(f"sweep_shard={shard!r}: the sweep has only {num_points} points, shard {index} gets none")
    return index, count


def run_folds(cfg: DictConfig) -> list[dict]:
    """``fold=all``: every fold in turn from the same pre-trained start, then the method pools what they wrote."""
    if cfg.get("fold") != "all":
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
    get_class(cfg.model._target_).pool_folds(out, [out / f"fold_{i}" for i in range(datamodule.num_folds)])
    return rows
