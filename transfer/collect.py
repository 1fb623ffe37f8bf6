"""``python -m transfer.collect RUN_OR_SWEEP_DIR [...] [--out DIR]``: every table of finished runs, from their records.

Reads each ``results.jsonl`` under the given folders (one run, a comparison of variants, a Hydra multirun sweep
with one folder per job), applies a run's label-free ``select`` across variants when its resolved config has one,
prints the comparison (test metrics per variant and target, mean +- sample std over seeds, sweep points and folds)
and writes it as ``summary.csv``; with segmentation ``per_case.csv`` files it also writes the clinical report
(``transfer.report``). ``transfer.train`` builds its end-of-comparison tables with the same functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from datamodules.files import atomic_write_text
from transfer.records import read_jsonl

# Metrics a method computes without target labels: the only ones a non-oracle selection may choose by.
LABEL_FREE_METRICS = {"snd", "entropy", "im_loss"}


def select_variants(rows: list[dict], select: DictConfig | None, protocol: str = "source_val") -> list[dict]:
    """Unsupervised model selection across variants, e.g. SND for SFDA hyperparameters:
    ``select: {shot: {candidates: [shot_lr1e-2, shot_lr1e-3], metric: snd, mode: max}}``. Per scenario, sweep
    point and target, the candidate with the best ``metric`` on the test rows is reported as the new variant.
    A metric that needs target labels (accuracy, EER, Dice, ...) is refused unless the protocol is ``oracle``;
    the chosen rows say how they were chosen (``selection``, ``selected_by``)."""
    chosen = []
    for name, spec in (select or {}).items():
        if spec.metric not in LABEL_FREE_METRICS and protocol != "oracle":
            raise ValueError(f"select.{name} picks by '{spec.metric}', which needs target labels; label-free metrics: "
                             f"{sorted(LABEL_FREE_METRICS)} (or selection=oracle for an upper bound, marked as such)")
        sign = 1 if spec.get("mode", "max") == "max" else -1
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            scenario, _, variant = (r.get("variant") or "").rpartition("/")
            if r["split"] == "test" and variant in spec.candidates and spec.metric in r["metrics"]:
                groups.setdefault((scenario, r.get("sweep_point"), r.get("fold"), r["target"]), []).append(r)
        for (scenario, *_), group in groups.items():
            best = max(group, key=lambda r: sign * r["metrics"][spec.metric])
            chosen.append({**best, "variant": f"{scenario}/{name}" if scenario else name,
                           "selected_from": best["variant"],
                           "selection": f"{spec.metric} ({spec.get('mode', 'max')}) among {list(spec.candidates)}"
                                        + (" [oracle]" if spec.metric not in LABEL_FREE_METRICS else ""),
                           "selected_by": {"metric": spec.metric, "mode": spec.get("mode", "max"),
                                           "label_free": spec.metric in LABEL_FREE_METRICS}})
    return chosen


def _aggregate(rows: list[dict]) -> dict[tuple, dict[str, list[float]]]:
    table: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        if r["split"] == "test":
            cell = table.setdefault((r.get("variant") or "-", r["target"]), {})
            for k, v in r["metrics"].items():
                cell.setdefault(k, []).append(v)
    return table


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single run)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def _mean_std(values: list[float]) -> str:
    mean, std = _stats(values)
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f}+-{std:.4f}"


def print_comparison(rows: list[dict], metrics=None) -> None:
    """Test metrics per variant and target: mean +- std over sweep points and folds, n = number of runs."""
    print(f"\n{'variant':<28} {'target':<14} {'n':>2}  metrics (split test)")
    for (variant, target), cell in _aggregate(rows).items():
        keys = [k for k in (metrics or sorted(cell)) if k in cell]
        shown = "  ".join(f"{k}={_mean_std(cell[k])}" for k in keys)
        print(f"{variant:<28} {target:<14} {len(next(iter(cell.values()))):>2}  {shown}")


def summary_csv(rows: list[dict]) -> str:
    lines = ["variant,target,metric,n,mean,std"]
    for (variant, target), cell in _aggregate(rows).items():
        for k, values in sorted(cell.items()):
            mean, std = _stats(values)
            lines.append(f"{variant},{target},{k},{len(values)},{mean:.6f},{std:.6f}")
    return "\n".join(lines) + "\n"


def read_rows(roots: Sequence[str | Path]) -> list[dict]:
    """Every row of every ``results.jsonl`` under ``roots`` (each file once, in path order)."""
    files: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: run folder does not exist")
        found = sorted(root.rglob("results.jsonl"))
        if not found:
            raise FileNotFoundError(f"{root}: no results.jsonl under it (did the run finish its evaluation?)")
        files += [f for f in found if f not in files]
    return [r for f in files for r in read_jsonl(f)]


def _run_config(root: Path) -> dict:
    cfg = root / "config_resolved.yaml"
    return (yaml.safe_load(cfg.read_text()) or {}) if cfg.is_file() else {}


def write_tables(rows: list[dict], out: Path, roots: Sequence[Path], select: DictConfig | None = None,
                 protocol: str = "source_val", metrics: Sequence[str] | None = None) -> list[dict]:
    """Add the label-free ``select`` across variants, print the comparison, write ``out/summary.csv``, and the
    clinical report when there are per-case files under ``roots``. Returns the rows, selected ones included."""
    if rows:
        rows = rows + select_variants(rows, select, protocol)
        print_comparison(rows, metrics)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "summary.csv", summary_csv(rows))
    if any(f for root in roots for f in Path(root).rglob("per_case.csv")):
        from transfer.report import build_report

        print(build_report(roots, out / "report"))
    return rows


def collect(roots: Sequence[str | Path], out: str | Path | None = None, metrics: Sequence[str] | None = None) -> list[dict]:
    """The tables of the runs under ``roots``, written to ``out`` (default: the first root); the first root's
    resolved config gives the ``select``, the selection protocol and the metrics to print."""
    roots = [Path(r) for r in roots]
    rows = read_rows(roots)
    cfg = _run_config(roots[0])
    select = OmegaConf.create(cfg["select"]) if cfg.get("select") else None
    return write_tables(rows, Path(out) if out else roots[0], roots, select,
                        (cfg.get("selection") or {}).get("protocol", "source_val"), metrics or cfg.get("report_metrics"))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transfer.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders, comparison folders or Hydra sweep folders")
    ap.add_argument("--out", type=Path, default=None, help="where summary.csv (and report/) go; default: the first folder")
    ap.add_argument("--metrics", default=None, help="comma-separated metrics to print (default: the run's report_metrics)")
    args = ap.parse_args(argv)
    try:
        collect(args.runs, args.out, args.metrics.split(",") if args.metrics else None)
    except FileNotFoundError as e:
        ap.error(str(e))
    print(f"-> {(args.out or args.runs[0]) / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
