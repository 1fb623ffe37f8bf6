"""``python -m transfer.report RUN_DIR [RUN_DIR ...] --out DIR``: the clinical comparison across methods.

Collects every ``per_case.csv`` under the run folders (one per fold), pools the cases of each method (the
folder above ``fold_i``, i.e. the variant), and writes ``report.md`` and ``report.csv`` (n, trainable
parameters, Dice mean ± SD, Dice per volume bin, HD95, predicted-vs-true volume regression),
``dice_by_volume.png`` (box plot) and ``volume_scatter.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from transfer.metrics.clinical import DEFAULT_BINS, bin_label, cases_from_csv, regression, summarize
from transfer.records import atomic_write_text


def _method_of(path: Path, root: Path) -> str:
    parent = path.parent
    if parent.name.startswith("fold_"):
        parent = parent.parent
    rel = parent.relative_to(root) if parent != root else Path(root.name)
    return str(rel) if str(rel) != "." else root.name


def _trainable(root: Path) -> dict[str, float]:
    out = {}
    for f in root.rglob("results.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            for k, v in r.get("metrics", {}).items():
                if k == "trainable_params":
                    out[r.get("variant") or f.parent.name] = v
    return out


def collect(roots: Sequence[Path]) -> dict[str, list]:
    methods: dict[str, list] = defaultdict(list)
    for root in roots:
        for f in sorted(root.rglob("fold_*/per_case.csv")):
            methods[_method_of(f, root)] += cases_from_csv(f.read_text())
    return dict(methods)


def build_report(roots: Sequence[str | Path], out: str | Path, bins: Sequence[float] = DEFAULT_BINS) -> str:
    roots, out = [Path(r) for r in roots], Path(out)
    methods = collect(roots)
    if not methods:
        raise FileNotFoundError(f"no fold_*/per_case.csv under {', '.join(map(str, roots))}")
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
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False)
        for patch in bp["boxes"]:
            patch.set_facecolor(f"C{j}")
        ax.plot([], [], color=f"C{j}", label=name, linewidth=6)
    ax.set_xticks(range(len(bin_names)), bin_names)
    ax.set_ylabel("Dice")
    ax.set_xlabel("true lesion volume")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "dice_by_volume.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    top = max(max(c.true_ml, c.pred_ml) for cases in methods.values() for c in cases)
    for j, (name, cases) in enumerate(methods.items()):
        x, y = [c.true_ml for c in cases], [c.pred_ml for c in cases]
        reg = regression(x, y)
        ax.scatter(x, y, s=12, color=f"C{j}", label=f"{name} (r={reg['pearson_r']:.2f})")
    ax.plot([0, top], [0, top], "k--", linewidth=1)
    ax.set_xlabel("true volume (mL)")
    ax.set_ylabel("predicted volume (mL)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "volume_scatter.png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transfer.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("report"))
    ap.add_argument("--bins", default=",".join(f"{b:g}" for b in DEFAULT_BINS), help="volume bin edges in mL")
    args = ap.parse_args(argv)
    print(build_report(args.runs, args.out, [float(b) for b in args.bins.split(",")]))
    print(f"-> {args.out}/report.md, report.csv, dice_by_volume.png, volume_scatter.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
