"""``python -m transfer.report RUN_DIR [RUN_DIR ...] --out DIR``: the clinical comparison across methods.

Collects every ``per_case.csv`` under the run folders (one per fold, or one of a single-fold run), pools the
cases of each method (named ``experiment/variant`` from the run's resolved config), and writes ``report.md`` and ``report.csv`` (n, trainable
parameters, Dice mean ± SD, Dice per volume bin, HD95, predicted-vs-true volume regression),
``dice_by_volume.png`` (box plot) and ``volume_scatter.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from transfer.metrics.clinical import DEFAULT_BINS, bin_label, cases_from_csv, regression, summarize
import yaml

from datamodules.files import atomic_write_text
from transfer.records import read_jsonl


def _run_name(folder: Path, root: Path) -> str:
    """``experiment/variant`` from the run's resolved config (fold folders belong to their run), else the path."""
    for d in (folder, *folder.parents):
        cfg = d / "config_resolved.yaml"
        if cfg.is_file():
            c = yaml.safe_load(cfg.read_text()) or {}
            name = c.get("experiment_name") or d.name
            return f"{name}/{c['variant']}" if c.get("variant") else str(name)
        if d == root:
            break
    rel = (folder.parent if folder.name.startswith("fold_") else folder).relative_to(root.parent)
    return str(rel)


def _case_files(root: Path) -> list[Path]:
    """Every per_case.csv: one per fold, or one of a single-fold run. A run's pooled copy (written beside its
    fold_* folders) is skipped, so no case counts twice."""
    files = []
    for f in sorted(root.rglob("per_case.csv")):
        if any(f.parent.glob("fold_*/per_case.csv")):
            continue
        files.append(f)
    return files


def _trainable(root: Path) -> dict[str, float]:
    """Trainable parameters per ``experiment/variant`` from the runs' results.jsonl rows."""
    out = {}
    for f in root.rglob("results.jsonl"):
        for r in read_jsonl(f):
            if "trainable_params" in r.get("metrics", {}):
                name = f"{r['experiment']}/{r['variant']}" if r.get("variant") else str(r.get("experiment"))
                out[name] = r["metrics"]["trainable_params"]
    return out


def collect(roots: Sequence[Path]) -> dict[str, list]:
    methods: dict[str, list] = defaultdict(list)
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: run folder does not exist")
        for f in _case_files(root):
            methods[_run_name(f.parent, root)] += cases_from_csv(f.read_text())
    return dict(methods)


def build_report(roots: Sequence[str | Path], out: str | Path, bins: Sequence[float] = DEFAULT_BINS) -> str:
    roots, out = [Path(r) for r in roots], Path(out)
    methods = collect(roots)
    if not methods:
        raise FileNotFoundError(f"no per_case.csv under {', '.join(map(str, roots))} (segmentation runs write one "
                                f"per fold when tested)")
    params = {k: v for r in roots for k, v in _trainable(r).items()}
    bin_names = [bin_label(i, bins) for i in range(len(bins) - 1)]
    header = ["method", "cases", "trainable", "dice", "dice_sd", *[f"dice {b}" for b in bin_names], "hd95_mm",
              "volume_slope", "volume_intercept", "volume_r"]
    rows = []
    for name, cases in methods.items():
        s = summarize(cases, bins)
        per_bin = [s.get(f"dice_bin_{bins[i]:g}_{bins[i + 1]:g}") for i in range(len(bins) - 1)]
        trainable = params.get(name)
        rows.append([name, s["n"], "" if trainable is None else int(trainable), s["dice"], s["dice_sd"], *per_bin, s["hd95_mm"],
                     s["volume_slope"], s["volume_intercept"], s["volume_pearson_r"]])
    def fmt(v) -> str:
        if v is None or v == "":
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "report.csv", buf.getvalue())
    _plots(methods, bin_names, out)
    return "\n".join(md)


def _plots(methods: dict[str, list], bin_names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(bin_names) * max(1, len(methods)) / 3, 4))
    width = 0.8 / len(methods)
    for j, (name, cases) in enumerate(methods.items()):
        data = [[c.dice for c in cases if c.volume_bin == b] or [float("nan")] for b in bin_names]
        pos = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(bin_names))]
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False,
                        medianprops={"color": "black", "linewidth": 1.5})  # the default median colour is C1's
        for patch in bp["boxes"]:
            patch.set_facecolor(f"C{j}")
        ax.plot([], [], color=f"C{j}", label=name, linewidth=6)
    ax.set_xticks(range(len(bin_names)), bin_names)
    _save(fig, ax, "true lesion volume (mL)", "Dice", out / "dice_by_volume.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    top = max(max(c.true_ml, c.pred_ml) for cases in methods.values() for c in cases)
    for j, (name, cases) in enumerate(methods.items()):
        x, y = [c.true_ml for c in cases], [c.pred_ml for c in cases]
        reg = regression(x, y)
        ax.scatter(x, y, s=12, color=f"C{j}", label=f"{name} (r={reg['pearson_r']:.2f})")
    ax.plot([0, top], [0, top], "k--", linewidth=1)
    _save(fig, ax, "true volume (mL)", "predicted volume (mL)", out / "volume_scatter.png")


def _save(fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transfer.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("report"))
    ap.add_argument("--bins", default=",".join(f"{b:g}" for b in DEFAULT_BINS), help="volume bin edges in mL")
    args = ap.parse_args(argv)
    try:
        report = build_report(args.runs, args.out, [float(b) for b in args.bins.split(",")])
    except FileNotFoundError as e:
        ap.error(str(e))
    print(report)
    print(f"-> {args.out}/report.md, report.csv, dice_by_volume.png, volume_scatter.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
