"""What one head CT costs in ``transfer.predict``, measured in one run and printed as ratios.

    python benchmarks/predict.py [--shape 512 512 32] [--folds 5] [--nets toy unet] [--tta] [--rounds 2] [--threads 1]
                                 [--device cpu|cuda] [--cases 4]

A synthetic scan of ``--shape`` voxels (int16 HU, 0.45 x 0.45 x 5 mm, stored LPS as DICOM converters write it) goes
through the predictor's own path (``SegmentationPredictor.probabilities``: load, reorient, window, every fold model,
mean probability, inverse transforms back onto the scan's grid) with 1 and ``--folds`` fold models, with and
without test-time mirroring (``--tta``). The reference is MONAI's plain ``sliding_window_inference`` of one model on
the scan as loaded by nibabel and windowed by hand. Printed: seconds per case, the k-fold ensemble against k single
model passes (goal <= 1.1: no repeated loading or preparation per fold), and the share of data preparation
(load, reorient, window) in the total (goal <= 10 %). Two networks: the toy's UNet (8-16-32) and a MONAI UNet of
realistic size (16-32-64-128-256, two residual units per level), both with a 96 x 96 x 32 sliding window.
Last, ``--cases`` scans in a row with all folds: a candidate ``transfer.predict`` does not use (measured, not kept:
on an H200 0.72x with the toy net but 1.11x with the realistic UNet, whose launch-bound sliding window loses more to
the reading thread's hold on the GIL than it gains), the next scan read and prepared in a background thread while
the models run on this one, against one scan after the other.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from omegaconf import OmegaConf

from transfer.methods.sah import SegmentationModule
from transfer.predict.inputs import Item
from transfer.predict.segmentation import SegmentationPredictor, ensemble_probabilities
from transfer.quiet import quiet_third_party

NETS = {
    "toy": {"name": "unet", "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "unet": {"name": "unet", "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2},
}
ROI = [96, 96, 32]
WINDOW = (0.0, 140.0)


def scan(folder: Path, shape: tuple[int, int, int]) -> Path:
    rng = np.random.default_rng(0)
    vol = rng.normal(35, 15, shape).astype(np.int16)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    vol[((x - shape[0] / 2) ** 2 + (y - shape[1] / 3) ** 2 < (shape[0] / 12) ** 2) & (z > shape[2] // 3)] = 70
    path = folder / "head_ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-0.45, -0.45, 5.0, 1.0])), path)
    return path


def models(net: dict, k: int) -> list[SegmentationModule]:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(SegmentationModule(net=dict(net), strategy="full", pretrained=None, sw_roi=ROI).eval())
    return out


def timed(fn, rounds: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference(path: Path, model: SegmentationModule, device: torch.device) -> torch.Tensor:
    """What one would write by hand: nibabel, window to [0, 1], one sliding-window pass, sigmoid, back to the CPU."""
    vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    x = torch.from_numpy(np.clip((vol - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1))[None, None].to(device)
    return torch.sigmoid(sliding_window_inference(x, ROI, 1, model, overlap=0.25, mode="gaussian")).cpu()


def read_ahead(items: list, prepare):
    """Each item with the future of its preparation, the next one prepared in a background thread meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(prepare, items[0]) if items else None
        for k, item in enumerate(items):
            current = upcoming
            upcoming = pool.submit(prepare, items[k + 1]) if k + 1 < len(items) else None
            yield item, current


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 32])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--tta", action="store_true", help="also time test-time mirroring (8 passes per model)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the models run (cpu, cuda)")
    ap.add_argument("--cases", type=int, default=4, help="scans in a row for the read-ahead figure (0: skip it)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    quiet_third_party()
    cfg = OmegaConf.create({"model": {"threshold": 0.5, "net": {"in_channels": 1}}})
    data = type("Data", (), {"window": WINDOW, "spacing": None})()
    with tempfile.TemporaryDirectory() as tmp:
        path = scan(Path(tmp), tuple(args.shape))
        item = Item(name="head_ct", path=path)
        print(f"scan {tuple(args.shape)}, models on {device}, {args.threads} thread(s), median of {args.rounds} round(s)")
        for net_name in args.nets:
            fold_models = [m.to(device) for m in models(NETS[net_name], args.folds)]
            single = SegmentationPredictor(fold_models[:1], [0], cfg, data, device=device)
            prepared = single.transform({"image": str(path), "case_id": "head_ct"})["image"].as_tensor()[None]
            prepared = prepared.to(device)
            t_prep = timed(lambda: single.transform({"image": str(path), "case_id": "head_ct"}), args.rounds, device)
            reference(path, fold_models[0], device)  # warm-up (CUDA kernels, allocator)
            t_ref = timed(lambda: reference(path, fold_models[0], device), args.rounds, device)
            t_pass = timed(lambda: ensemble_probabilities(fold_models[:1], prepared, False), args.rounds, device)
            print(f"\n{net_name}: {sum(p.numel() for p in fold_models[0].parameters()):,} parameters")
            print(f"  data preparation (load, reorient, window)  {t_prep:7.2f} s")
            print(f"  one model pass on the prepared scan        {t_pass:7.2f} s")
            print(f"  reference: MONAI sliding window, 1 model   {t_ref:7.2f} s")
            for tta in ([False, True] if args.tta else [False]):
                for k in sorted({1, args.folds}):
                    predictor = SegmentationPredictor(fold_models[:k], list(range(k)), cfg, data, tta=tta, device=device)
                    t = timed(lambda: predictor.probabilities(item), args.rounds, device)
                    passes = k * (8 if tta else 1)
                    print(f"  predict, {k} fold(s){' + TTA' if tta else '':6}  {t:7.2f} s per case   "
                          f"vs {passes} single passes {t / (passes * t_pass):5.2f}x   preparation {100 * t_prep / t:4.1f} %"
                          + (f"   vs reference {t / t_ref:5.2f}x" if k == 1 and not tta else ""))
            if args.cases:
                predictor = SegmentationPredictor(fold_models, list(range(args.folds)), cfg, data, device=device)
                items = [Item(name=f"case{i}", path=path) for i in range(args.cases)]

                def ahead():
                    for it, prepared in read_ahead(items, predictor.prepare):
                        predictor.probabilities(it, prepared.result())

                t_seq = timed(lambda: [predictor.probabilities(it) for it in items], args.rounds, device)
                t_ahead = timed(ahead, args.rounds, device)
                print(f"  {args.cases} cases in a row, {args.folds} folds: read ahead {t_ahead / args.cases:5.2f} s per case, "
                      f"one after the other {t_seq / args.cases:5.2f} s -> {t_ahead / t_seq:.2f}x")


if __name__ == "__main__":
    main()
