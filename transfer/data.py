"""``python -m transfer.data check experiment=NAME [overrides] [--out FILE]``: what an experiment would read, before
any GPU hour. ``python -m transfer.data import-dicom SRC OUT``: DICOM series as NIfTI volumes and a datalist (see
:func:`import_main`).

``check`` runs only the experiment's data setup (no model, no weights; a CLIP-embedding module is checked through
the image domains it wraps) and prints the layout found, counts per split, the class names in label order, items
dropped by reason, the comparison with the release's published counts and every fallback taken; ``--out FILE``
writes the same as JSON. It creates no run folder. Every training run writes that file (``data_summary.json``)
beside its ``results.jsonl``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from datamodules.contract import check_data_module
from transfer import experiments
from transfer.records import write_summary


def data_only(cfg: DictConfig):
    """The experiment's data module without anything that needs weights: an embedding module (``encoder``) is
    replaced by the image-domain module it wraps."""
    node = cfg.data
    if "encoder" in node and "domains" in node:
        node = node.domains
    return instantiate(node, _convert_="all")


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"layout: {s.get('layout')}"]
    for split, counts in s.get("splits", {}).items():
        lines.append(f"  {split:<22} " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    if s.get("classes") is not None:
        cls = s["classes"]
        shown = ", ".join(f"{i}:{c}" for i, c in enumerate(cls[:12])) + (f", … ({len(cls)} classes)" if len(cls) > 12 else "")
        lines.append(f"classes (label order{', ' + s['class_source'] if s.get('class_source') else ''}): {shown}")
    for reason, n in (s.get("dropped") or {}).items():
        lines.append(f"dropped: {n:,} {reason}")
    for key, v in (s.get("official") or {}).items():
        ok = "ok" if v["expected"] == v["found"] else "DIFFERS"
        lines.append(f"official count {key}: expected {v['expected']:,}, found {v['found']:,} [{ok}]")
    for note in s.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def check(cfg: DictConfig, out: str | Path | None = None) -> dict[str, Any]:
    """The data summary of ``cfg``'s data module, printed, and written to ``out`` when given."""
    dm = data_only(cfg)
    if getattr(dm, "fold", None) == "all":  # every fold's size is in the summary; the split shown is fold 0's
        dm.fold = 0
    check_data_module(dm)
    dm.prepare_data()
    dm.setup("fit")
    summary = write_summary(dm, out) if out else dm.data_summary()
    print(f"{cfg.experiment_name}: {type(dm).__name__}\n{format_summary(summary)}" + (f"\n-> {out}" if out else ""))
    return summary


def compose_cli(overrides: list[str]) -> DictConfig:
    """The config ``python -m transfer.train`` would run with these overrides, composed without a run folder; a
    config error ends the command with its message (exit 2)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return experiments.compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def check_main(argv: list[str]) -> int:
    from transfer.preflight import expected_errors, stop_if_missing
    from transfer.quiet import quiet_third_party

    quiet_third_party()

    out = None
    if "--out" in argv:
        i = argv.index("--out")
        if i + 1 >= len(argv):
            raise SystemExit("--out needs a file name, e.g. --out data_summary.json")
        out = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    cfg = compose_cli(argv)
    stop_if_missing(cfg, str(cfg.experiment_name), argv, weights=False)
    with expected_errors():
        check(cfg, out)
    return 0


def import_main(argv: list[str]) -> int:
    """Every volume series found under SRC (any depth) as ``OUT/images/<case>.nii.gz`` plus ``OUT/dataset.json``
    (Decathlon form, ``patient_id`` from PatientID). Refused series are named with the reason and the rest imported;
    the exit code is 1 when any series was refused."""
    import argparse

    from datamodules.dicom import MIN_SLICES, import_dicom
    from datamodules.errors import DatasetError

    ap = argparse.ArgumentParser(prog="python -m transfer.data import-dicom", description=import_main.__doc__)
    ap.add_argument("src", type=Path, help="folder of DICOM files (any depth, any file names)")
    ap.add_argument("out", type=Path, help="output folder: images/*.nii.gz and dataset.json")
    ap.add_argument("--label", action="append", default=[], metavar="SERIES=FILE",
                    help="pair a series (SeriesInstanceUID or case id) with a label NIfTI in its grid; repeatable")
    ap.add_argument("--min-slices", type=int, default=MIN_SLICES, help=f"fewest slices a volume may have ({MIN_SLICES})")
    ap.add_argument("--resample-tilt", action="store_true",
                    help="resample gantry-tilted series onto an orthogonal grid instead of refusing them")
    args = ap.parse_args(argv)
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            ap.error(f"--label {item!r}: expected SERIES=FILE")
        if not Path(value).is_file():
            ap.error(f"--label {item!r}: {value} does not exist")
        labels[key] = value
    try:
        report = import_dicom(args.src, args.out, labels, args.min_slices, args.resample_tilt)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for entry in report.imported:
        print(f"{entry['case_id']}: {entry['slices']} slices, patient {entry['patient_id']} -> {args.out / entry['image']}"
              + (f" (label {entry['label']})" if "label" in entry else ""))
    for reason, items in report.skipped.items():
        print(f"skipped {len(items)}: {reason}" + (f" (e.g. {items[0]})" if items else ""))
    for uid, why in report.refused.items():
        print(f"REFUSED {why}", file=sys.stderr)
    print(f"{len(report.imported)} series imported, {len(report.refused)} refused, "
          f"{sum(len(v) for v in report.skipped.values())} skipped -> {args.out / 'dataset.json'}")
    if not report.imported and not report.refused:
        print(f"error: no DICOM image series under {args.src}", file=sys.stderr)
        return 2
    return 1 if report.refused else 0


USAGE = ("usage: python -m transfer.data check experiment=NAME [overrides] [--out FILE]\n"
         "       python -m transfer.data import-dicom SRC OUT [--label SERIES=FILE] [--min-slices N] [--resample-tilt]")


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "import-dicom":
        raise SystemExit(import_main(sys.argv[2:]))
    if len(sys.argv) < 2 or sys.argv[1] != "check":
        raise SystemExit(USAGE)
    raise SystemExit(check_main(sys.argv[2:]))


if __name__ == "__main__":
    main()
