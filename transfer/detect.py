"""``python -m transfer.detect``: run the frozen detector (through a modality translator) on a folder of
images and write COCO-json detections.

    python -m transfer.detect --detector fcos --detector-weights fcos_resnet50_fpn.coco \\
        --modality ir --translator runs/ir_flir.safetensors images/ --out detections.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datamodules.detection import IMAGE_EXTENSIONS, load_image
from datamodules.errors import DatasetError
from transfer.models import create_model
from transfer.models.detectors import TorchvisionDetector
from transfer.predict.inputs import discover
from datamodules.files import atomic_write_text


def detections_to_coco(files: list[Path], preds: list[dict], min_score: float = 0.0, first_id: int = 0) -> list[dict]:
    """COCO results format (``bbox`` = x, y, w, h); ``image_id`` = position in the sorted file list."""
    out = []
    for image_id, (f, p) in enumerate(zip(files, preds), start=first_id):
        for box, score, label in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            if score < min_score:
                continue
            x0, y0, x1, y1 = box
            out.append({"image_id": image_id, "file_name": f.name, "category_id": int(label),
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(score), 5)})
    return out


def main(argv: list[str] | None = None) -> int:
    from transfer.methods.modtr import DetectionService

    ap = argparse.ArgumentParser(prog="python -m transfer.detect", description=__doc__.split("\n\n")[0])
    ap.add_argument("images", type=Path, help="a folder of images (or one image)")
    ap.add_argument("--detector", required=True, help="fcos | retinanet | fasterrcnn | tiny_fcos")
    ap.add_argument("--detector-weights", required=True,
                    help="registered weights name or file; 'random' for an untrained detector, on purpose")
    ap.add_argument("--num-classes", type=int, default=91)
    ap.add_argument("--modality", default="rgb", help="rgb (no translator) or the modality the translator serves")
    ap.add_argument("--translator", type=Path, help="translator artefact (.safetensors) for --modality")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--min-score", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=Path("detections.json"))
    args = ap.parse_args(argv)
    if not args.images.exists():
        ap.error(f"{args.images}: no such file or folder")

    kwargs = {"size": 64} if args.detector == "tiny_fcos" else {}
    detector = TorchvisionDetector(create_model(f"detector/{args.detector}", weights=args.detector_weights,
                                                 num_classes=args.num_classes, **kwargs))
    service = DetectionService(detector, args.detector)
    if args.modality != "rgb":
        if args.translator is None:
            ap.error(f"--modality {args.modality} needs --translator")
        service.add_translator(args.modality, args.translator)
    try:
        files = [item.path for item in discover([args.images], tuple(IMAGE_EXTENSIONS), "image")]
    except DatasetError as e:
        ap.error(str(e))
    if not files:
        ap.error(f"{args.images}: no images found")
    mode = "RGB" if args.modality == "rgb" else "L"
    results = []
    for i in range(0, len(files), args.batch_size):
        batch = files[i: i + args.batch_size]
        preds = service.detect([load_image(f, mode) for f in batch], args.modality)
        results += detections_to_coco(batch, preds, args.min_score, first_id=i)
    atomic_write_text(args.out, json.dumps(results))
    print(f"{len(results)} detections on {len(files)} images -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
