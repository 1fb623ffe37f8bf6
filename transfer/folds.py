"""Cross-validation folds a clinician can trust: made once, per patient, written to a file runs read.

    python -m transfer.folds make data/sah/datalist.json --k 3 --seed 0 --out data/sah/folds.json
    python -m transfer.folds make data/sah/datalist.json --k 3 --stratify volume --bins 0,25,50,100,225
    python -m transfer.folds show data/sah/folds.json

All scans of a patient land in the same fold. With ``--stratify volume`` patients are dealt to folds within
lesion-volume bins (mL, from the label and its voxel spacing), so every fold sees small and large lesions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from datamodules.errors import DatasetError, read_json
from datamodules.summary import DataSummary
from datamodules.volumes import load_datalist, make_folds, write_folds

_OLD_KEYS = ("datalist", "folds", "k", "seed", "stratify", "bins", "out")


def _from_key_value(argv: list[str]) -> list[str]:
    """The 0.1 form (``make datalist=X k=3 out=Y``) as today's arguments, with a note; until 0.3."""
    if not any("=" in a and not a.startswith("-") and a.split("=", 1)[0] in _OLD_KEYS for a in argv[1:]):
        return argv
    out = argv[:1]
    for a in argv[1:]:
        key, _, value = a.partition("=")
        if key not in _OLD_KEYS:
            raise SystemExit(f"unknown argument '{a}'; expected one of --k, --seed, --stratify, --bins, --out")
        out += [value] if key in ("datalist", "folds") else [f"--{key}", value]
    print("note: key=value arguments are deprecated (removed in 0.3); this is: python -m transfer.folds "
          + " ".join(out), file=sys.stderr)
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m transfer.folds", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="deal a datalist's patients to k folds and write the fold file")
    make.add_argument("datalist", help="the datalist (JSON) whose cases are dealt")
    make.add_argument("--k", type=int, default=3, help="number of folds (default 3)")
    make.add_argument("--seed", type=int, default=0, help="seed of the deal (default 0)")
    make.add_argument("--stratify", choices=["volume"], help="deal within lesion-volume bins")
    make.add_argument("--bins", default="0,25,50,100,225", help="volume bin edges in mL, comma-separated")
    make.add_argument("--out", help="fold file to write (default: folds.json beside the datalist)")
    show = sub.add_parser("show", help="print a fold file's settings and cases per fold")
    show.add_argument("folds", help="the fold file")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None


def _main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(_from_key_value(list(sys.argv[1:] if argv is None else argv)))
    if args.command == "show":
        doc = read_json(args.folds, "fold file")
        sizes = np.bincount(list(doc["folds"].values()))
        print(f"{doc['k']} folds (seed {doc['seed']}, stratify {doc['stratify']}): cases per fold {sizes.tolist()}")
        return 0
    try:
        bins = [float(b) for b in args.bins.split(",")]
    except ValueError as e:
        raise SystemExit(f"--bins takes comma-separated numbers: {e}") from None
    if args.k < 2:
        raise SystemExit(f"k must be at least 2 (k folds: each is the test set once), got k={args.k}")
    summary = DataSummary()
    cases = load_datalist(args.datalist, summary=summary)
    try:
        folds = make_folds(cases, args.k, args.seed, args.stratify, bins)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    out = args.out or str(Path(args.datalist).with_name("folds.json"))
    write_folds(out, args.datalist, folds, args.k, args.seed, args.stratify, cases)
    print(f"{len(cases)} cases of {len({c['patient_id'] for c in cases})} patients -> {args.k} folds "
          f"(cases per fold {np.bincount(list(folds.values()), minlength=args.k).tolist()}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
