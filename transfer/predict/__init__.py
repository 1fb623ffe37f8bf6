"""``python -m transfer.predict RUN_DIR -i INPUT [INPUT ...] -o OUT``: apply a finished training run to new files.

RUN_DIR is one run folder as ``transfer.train`` wrote it (for a run with variants, one variant's folder); its
records say which checkpoint each fold selected. What comes out depends on the run's task:

- segmentation (SAH runs): NIfTI scans, a folder of them, a datalist, or a DICOM folder (imported on the fly) ->
  ``OUT/<case>.nii.gz``, a ``uint8`` mask in the scan's own grid (same shape and affine), the folds' probabilities
  averaged (``--folds`` to choose, ``--tta`` for mirrored passes), and ``OUT/volumes.csv``; for DICOM input
  ``--dicom-seg`` adds ``OUT/<case>.seg.dcm``, a DICOM SEG referencing the source series;
- deepfake detection (MoE-LoRA runs): audio files -> ``OUT/scores.csv`` (score = log P(bona fide), decision at
  the run's development-set threshold);
- classification (source-only, SFDA, LanDA runs): images -> ``OUT/predictions.csv`` (class name, probability).

A case that cannot be read is named and the rest go on; the exit code is then 1. Outputs already in OUT from an
earlier call with the same settings are kept (resume) unless ``--overwrite``. ``--device`` says where the models
run: the first CUDA GPU when PyTorch sees one, else the CPU (``auto``); preparation and writing stay on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("transfer")

TASKS = {
    "transfer.methods.sah.SegmentationModule": "segmentation",
    "transfer.methods.moelora.DeepfakeDetectionModule": "deepfake",
    "transfer.methods.source_only.SourceOnlyClassifier": "classification",
    "transfer.methods.sfda.FewShotSFDAModule": "classification",
    "transfer.methods.landa.LanDAModule": "classification",
}


def task_of(cfg) -> str:
    target = str(cfg.model.get("_target_", ""))
    if target not in TASKS:
        raise SystemExit(f"error: transfer.predict does not apply {target or 'this'} runs (it applies "
                         f"{', '.join(sorted(set(TASKS.values())))} runs); ModTr detection is python -m transfer.detect")
    return TASKS[target]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m transfer.predict", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a finished training run folder (one variant's folder)")
    ap.add_argument("-i", "--input", type=Path, nargs="+", required=True,
                    help="files, folders, a datalist (.json) or (segmentation) a DICOM folder")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    ap.add_argument("--folds", type=int, nargs="+", help="the folds to ensemble (default: all)")
    ap.add_argument("--tta", action="store_true", help="segmentation: average over mirrored copies (2^3 passes)")
    ap.add_argument("--save-probabilities", action="store_true",
                    help="segmentation: also write <case>_prob.nii.gz (float32, the scan's grid)")
    ap.add_argument("--dicom-seg", action="store_true",
                    help="segmentation of DICOM input: also <case>.seg.dcm, a DICOM SEG referencing the source series")
    ap.add_argument("--threshold", type=float, help="deepfake: decision threshold instead of the run's dev-set one")
    ap.add_argument("--overwrite", action="store_true", help="predict again what OUT already holds")
    ap.add_argument("--device", default="auto",
                    help="where the models run: auto (the first CUDA GPU if PyTorch sees one, else the CPU), cpu, "
                         "cuda, cuda:N, mps")
    return ap


def pick_device(name: str):
    """``--device`` as a torch device; a device this machine does not have is refused before anything loads."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"error: --device {name}: not a device name ({e}); use auto, cpu, cuda, cuda:N or mps") from None
    have = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if device.type not in have:
        raise SystemExit(f"error: --device {name}: transfer.predict runs on cpu, cuda or mps")
    if not have[device.type]:
        raise SystemExit(f"error: --device {name}: PyTorch sees no {device.type} device on this machine; "
                         f"use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    return device


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    from datamodules.files import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """Outputs kept from an earlier call must have been made the same way."""
    path = out / "predict.json"
    if path.is_file() and not overwrite:
        before = json.loads(path.read_text())
        if before != settings:
            diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise SystemExit(f"error: {out} holds outputs made with other settings ({', '.join(diff)}: "
                             f"{[before.get(k) for k in diff]} then, {[settings.get(k) for k in diff]} now); "
                             f"pass --overwrite or choose another output folder")


def _dicom_inputs(inputs: list[Path], out: Path, failures: dict[str, str]) -> list[Path]:
    """Folders holding DICOM but no NIfTI are imported into ``OUT/dicom_import/<name>`` (their datalist replaces
    them); refused series count as failed cases."""
    from datamodules.dicom import import_dicom
    from transfer.predict.inputs import NIFTI, has_suffix

    result = []
    for src in inputs:
        if src.is_dir() and not any(has_suffix(p, NIFTI) for p in src.rglob("*")):
            target = out / "dicom_import" / src.name
            report = import_dicom(src, target)
            failures.update({f"series {uid}": why for uid, why in report.refused.items()})
            print(f"{src}: {len(report.imported)} DICOM series imported into {target}, {len(report.refused)} refused")
            if report.imported:
                result.append(target / "dataset.json")
        else:
            result.append(src)
    return result


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import track

    from datamodules.errors import DatasetError
    from transfer.predict.inputs import AUDIO, IMAGES, NIFTI, discover
    from transfer.predict.runs import RunError, launch_dir, load_model, read_run
    from transfer.quiet import quiet_third_party

    quiet_third_party()
    device = pick_device(args.device)

    try:
        folds = read_run(args.run_dir, args.folds)
    except RunError as e:
        raise SystemExit(f"error: {e}") from None
    _stop_if_weights_missing(folds, launch_dir)
    task = task_of(folds[0].cfg)
    out: Path = args.output
    failures: dict[str, str] = {}
    inputs = _dicom_inputs(args.input, out, failures) if task == "segmentation" else args.input
    suffixes = {"segmentation": (NIFTI, "NIfTI"), "deepfake": (AUDIO, "audio"), "classification": (IMAGES, "image")}
    try:
        items = discover(inputs, *suffixes[task])
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    if not items and not failures:
        raise SystemExit(f"error: no input files found in {' '.join(map(str, args.input))}")

    predictor = _predictor(task, folds, args, load_model, launch_dir, device)
    print(f"{args.run_dir}: {len(folds)} model(s) on {device}")
    settings = {"run": str(args.run_dir.resolve()), **predictor.settings()}
    _check_settings(out, settings, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    from datamodules.files import atomic_write_text

    atomic_write_text(out / "predict.json", json.dumps(settings, indent=1, sort_keys=True) + "\n")
    earlier = _earlier_rows(out / predictor.table, predictor.key)
    table_rows, kept = [], 0
    for item in track(items, description=f"{task}: {len(items)} inputs", transient=True):
        try:
            row = None if args.overwrite else predictor.kept(item, out, earlier)
            kept += row is not None
            if row is None:
                with torch.no_grad():
                    row = predictor.predict(item, out)
            table_rows.append(row)
        except DatasetError as e:  # named at the end, the rest go on
            failures[str(item.path)] = str(e)
    table = predictor.table
    _write_csv(out / table, predictor.columns, sorted(table_rows, key=lambda r: r[predictor.key]))
    done = len(table_rows) - kept
    print(f"{done} predicted, {kept} kept from an earlier call, {len(failures)} failed -> {out / table}")
    for why in failures.values():  # each message names its file or series
        print(f"FAILED {why}", file=sys.stderr)
    return 1 if failures else 0


def _stop_if_weights_missing(folds, launch_dir) -> None:
    """Every weights file the folds' models are built from (a backbone, a pre-trained base, an SFDA source model),
    checked before anything is loaded or written; all that is missing named at once, exit 2."""
    from transfer.preflight import format_missing, missing_assets, stop

    missing = []
    with launch_dir(folds[0].folder):  # relative paths meant the folder training was launched from
        for fold in folds:
            missing += [m for m in missing_assets(fold.cfg, data=False)
                        if m.kind != "checkpoint" and m not in missing]  # the run's resume point is not needed
    if missing:
        stop(format_missing(missing, str(folds[0].cfg.get("experiment_name", "this run"))))


def _earlier_rows(path: Path, key: str) -> dict[str, dict]:
    """The rows of an earlier call's table, by ``key`` (resume)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r[key]: r for r in csv.DictReader(f)}


def _predictor(task: str, folds, args, load_model, launch_dir, device):
    from hydra.utils import instantiate

    cfg = folds[0].cfg
    with launch_dir(folds[0].folder):
        datamodule = instantiate(cfg.data, _convert_="all")  # constructed only: its reading settings
    models = [load_model(f, datamodule, data_prepared=i > 0).to(device) for i, f in enumerate(folds)]
    if task == "segmentation":
        from transfer.predict.segmentation import SegmentationPredictor

        return SegmentationPredictor(models, [f.index for f in folds], cfg, datamodule, args.tta, args.save_probabilities,
                                     args.dicom_seg, device=device)
    if task == "deepfake":
        from transfer.predict.audio import AudioPredictor

        threshold = args.threshold
        if threshold is None:
            found = [f.val_metrics.get("eer_threshold") for f in folds]
            if all(t is not None for t in found):
                threshold = float(sum(found) / len(found))
            else:
                log.warning("%s recorded no development-set threshold (it ran without validation): scores.csv has "
                            "scores but no decisions; pass --threshold to decide", args.run_dir)
        return AudioPredictor(models, datamodule, threshold, device=device)
    from transfer.predict.images import ImagePredictor

    if folds[0].classes is None:
        raise SystemExit(f"error: {folds[0].folder} has no data_summary.json with the class names in label order")
    encoder = getattr(datamodule, "encoder", None)  # LanDA: the models classify CLIP embeddings
    if encoder is not None:
        encoder.to(device)
    return ImagePredictor(models, datamodule, folds[0].classes, embed=encoder.encode_images if encoder else None,
                          outputs_probabilities=encoder is not None, device=device)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run(_parser().parse_args(argv))
