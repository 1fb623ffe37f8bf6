"""Cross-validation folds a clinician can trust: made once, per patient, written to a file runs read.

    python -m transfer.folds make datalist=data/sah/datalist.json k=3 seed=0 out=data/sah/folds.json
    python -m transfer.folds make datalist=... k=3 seed=0 stratify=volume bins=0,25,50,100,225 out=...
    python -m transfer.folds show folds=data/sah/folds.json

All scans of a patient land in the same fold. With ``stratify=volume`` patients are dealt to folds within
lesion-volume bins (mL, from the label and its voxel spacing), so every fold sees small and large lesions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from datamodules.errors import DatasetError, read_json
from datamodules.summary import DataSummary
from datamodules.volumes import load_datalist, make_folds, write_folds


def _kv(argv: Sequence[str]) -> dict[str, str]:
    out = {}
    for a in argv:
        if "=" not in a:
            raise SystemExit(f"arguments are key=value, got '{a}'")
        k, v = a.split("=", 1)
        out[k] = v
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("make", "show"):
        print(__doc__)
        return 2
    args = _kv(argv[1:])
    if argv[0] == "show":
        doc = read_json(args["folds"], "fold file")
        sizes = np.bincount(list(doc["folds"].values()))
        print(f"{doc['k']} folds (seed {doc['seed']}, stratify {doc['stratify']}): cases per fold {sizes.tolist()}")
        return 0
    unknown = set(args) - {"datalist", "k", "seed", "stratify", "bins", "out"}
    if unknown:
        raise SystemExit(f"unknown argument(s) {sorted(unknown)}; expected datalist, k, seed, stratify, bins, out")
    if "datalist" not in args:
        raise SystemExit("datalist=PATH is required")
    try:
        k, seed = int(args.get("k", 3)), int(args.get("seed", 0))
        bins = [float(b) for b in args.get("bins", "0,25,50,100,225").split(",")]
    except ValueError as e:
        raise SystemExit(f"k and seed are integers, bins comma-separated numbers: {e}") from None
    if k < 2:
        raise SystemExit(f"k must be at least 2 (k folds: each is the test set once), got k={k}")
    summary = DataSummary()
    cases = load_datalist(args["datalist"], summary=summary)
    stratify = args.get("stratify")
    try:
        folds = make_folds(cases, k, seed, stratify, bins)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    out = args.get("out") or str(Path(args["datalist"]).with_name("folds.json"))
    write_folds(out, args["datalist"], folds, k, seed, stratify, cases)
    print(f"{len(cases)} cases of {len({c['patient_id'] for c in cases})} patients -> {k} folds "
          f"(cases per fold {np.bincount(list(folds.values()), minlength=k).tolist()}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
