"""Paired RGB/IR object detection: FLIR-aligned, LLVIP and COCO-json readers, one Lightning data module.

An item is ``{"ir": [1,H,W] float in [0,1], "rgb": [3,H,W] float in [0,1] (when paired), "target":
{"boxes": xyxy float [N,4], "labels": int64 [N]}, "id": str}``. Labels are the detector's class indices
(COCO indices for torchvision's COCO detectors) given by ``class_map`` {dataset class name: index};
boxes of other classes (e.g. FLIR's stray ``dog``) are dropped and counted.

Layouts (nothing is downloaded; see datamodules/README.md):
- FLIR-aligned: ``root/JPEGImages/FLIR_xxxxx_PreviewData.jpeg`` (IR), ``FLIR_xxxxx_RGB.jpg`` (RGB),
  ``root/Annotations/FLIR_xxxxx_PreviewData.xml`` (VOC), ``root/align_{train,validation}.txt``;
- LLVIP: ``root/{infrared,visible}/{train,test}/<id>.jpg``, ``root/Annotations/<id>.xml``;
- COCO json: ``root/<ann_file>`` with ``images``/``annotations``/``categories``; IR images under
  ``root/<ir_dir>``, RGB (optional) under ``root/<rgb_dir>`` with the same file names.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import DatasetError, read_json
from .imagelists import IMAGE_EXTENSIONS
from .samplers import SeededTrainData, eval_loader
from .summary import DataSummary

log = logging.getLogger(__name__)


@dataclass
class Annotation:
    boxes: np.ndarray  # [N, 4] xyxy, pixels
    labels: np.ndarray  # [N] int64
    dropped: int = 0  # boxes of classes outside class_map (and COCO crowd regions)
    clipped: int = 0  # boxes clipped to the image
    size: tuple[int, int] | None = None  # (width, height) when the file states it
    degenerate: int = 0  # boxes without area (xmax <= xmin or ymax <= ymin after clipping): dropped
    difficult: np.ndarray | None = None  # [N] bool, VOC <difficult>1</difficult>

    def __post_init__(self):
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), dtype=bool)


@dataclass
class PairedItem:
    id: str
    ir: Path
    rgb: Path | None
    ann: Annotation = field(repr=False, default=None)


# ------------------------------------------------------------------------------------------ readers
def read_voc_xml(path: str | Path, class_map: Mapping[str, int]) -> Annotation:
    """Pascal-VOC xml -> boxes/labels; unknown classes dropped, boxes clipped to the stated image size."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file does not exist") from None
    except ET.ParseError as e:
        raise DatasetError(f"{path}: not a valid VOC xml ({e})") from None
    size = root.find("size")
    wh = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        wh = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
    boxes, labels, difficult, dropped = [], [], [], 0
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{path}: object {i} ('{name}') has no <bndbox>")
        try:
            box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: object {i} ('{name}') has a non-numeric or missing box coordinate") from None
        if name not in class_map:
            dropped += 1
            continue
        boxes.append(box)
        labels.append(class_map[name])
        difficult.append((obj.findtext("difficult") or "0").strip() in ("1", "true", "True"))
    return _finish(path, boxes, labels, dropped, wh, difficult)


def _finish(path, boxes, labels, dropped, wh, difficult=None) -> Annotation:
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = 0
    if wh is not None and len(b):
        clippedb = b.copy()
        clippedb[:, [0, 2]] = clippedb[:, [0, 2]].clip(0, wh[0])
        clippedb[:, [1, 3]] = clippedb[:, [1, 3]].clip(0, wh[1])
        clipped = int((clippedb != b).any(1).sum())
        b = clippedb
    labels = np.asarray(labels, dtype=np.int64)
    difficult = np.asarray(difficult if difficult is not None else [False] * len(b), dtype=bool)
    ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # zero-area boxes exist in the releases (FLIR): dropped, counted
    return Annotation(b[ok], labels[ok], dropped, clipped, wh, int((~ok).sum()), difficult[ok])


def read_coco_json(path: str | Path, class_map: Mapping[str, int]) -> dict[str, Annotation]:
    """COCO json -> {file_name: Annotation}; bbox [x, y, w, h] becomes xyxy; categories mapped by name."""
    path = Path(path)
    data = read_json(path, "annotation file")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: missing the '{key}' list of a COCO annotation file")
    cats = {c["id"]: c["name"] for c in data["categories"]}
    per_image: dict[int, list] = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        if a.get("image_id") not in per_image:
            raise DatasetError(f"{path}: annotation {a.get('id')} refers to unknown image_id {a.get('image_id')}")
        if a.get("category_id") not in cats:
            raise DatasetError(f"{path}: annotation {a.get('id')} has unknown category_id {a.get('category_id')}")
        per_image[a["image_id"]].append(a)
    out = {}
    for im in data["images"]:
        boxes, labels, dropped = [], [], 0
        for a in per_image[im["id"]]:
            name = cats[a["category_id"]]
            if name not in class_map or a.get("iscrowd", 0):
                dropped += 1
                continue
            x, y, w, h = a["bbox"]
            boxes.append([x, y, x + w, y + h])
            labels.append(class_map[name])
        wh = (im["width"], im["height"]) if "width" in im and "height" in im else None
        out[im["file_name"]] = _finish(f"{path} (image {im['file_name']})", boxes, labels, dropped, wh)
    return out


def load_image(path: Path, mode: str) -> torch.Tensor:
    """uint8 file -> float [C,H,W] in [0,1]; ``mode`` 'L' (IR, 1 channel) or 'RGB'."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DatasetError(f"{path}: image does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None
    t = torch.from_numpy(arr)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------------------ layouts
def _stem_images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def llvip_items(root: Path, split: str, class_map: Mapping[str, int], paired: bool = True) -> list[PairedItem]:
    ir_dir, rgb_dir, ann_dir = root / "infrared" / split, root / "visible" / split, root / "Annotations"
    for d in (ir_dir, ann_dir) + ((rgb_dir,) if paired else ()):
        if not d.is_dir():
            raise DatasetError(f"{d}: folder missing; LLVIP layout is root/{{infrared,visible}}/{{train,test}}/<id>.jpg "
                               f"+ root/Annotations/<id>.xml (see datamodules/README.md)")
    ir = _stem_images(ir_dir)
    rgb = _stem_images(rgb_dir) if paired else {}
    if paired:
        only = sorted(set(ir) ^ set(rgb))
        if only:
            side = "infrared" if only[0] in ir else "visible"
            raise DatasetError(f"{(ir_dir if side == 'infrared' else rgb_dir) / only[0]}.*: image has no "
                               f"{'visible' if side == 'infrared' else 'infrared'} pair ({len(only)} unpaired)")
    items = []
    for stem, path in ir.items():
        xml = ann_dir / f"{stem}.xml"
        if not xml.exists():
            raise DatasetError(f"{path}: image has no annotation file {xml}")
        items.append(PairedItem(stem, path, rgb.get(stem), read_voc_xml(xml, class_map)))
    return items


def flir_aligned_items(root: Path, split: str, class_map: Mapping[str, int], paired: bool = True) -> list[PairedItem]:
    split_file = root / {"train": "align_train.txt", "test": "align_validation.txt"}.get(split, f"align_{split}.txt")
    if not split_file.exists():
        raise DatasetError(f"{split_file}: split list missing; FLIR-aligned layout is root/JPEGImages/"
                           f"FLIR_xxxxx_PreviewData.jpeg + _RGB.jpg, root/Annotations/*.xml, root/align_*.txt")
    items = []
    for lineno, line in enumerate(split_file.read_text().splitlines(), 1):
        stem = line.strip().split("/")[-1]
        if not stem:
            continue
        base = stem.removesuffix(".jpeg").removesuffix("_PreviewData").removesuffix("_RGB")
        ir = root / "JPEGImages" / f"{base}_PreviewData.jpeg"
        rgb = root / "JPEGImages" / f"{base}_RGB.jpg"
        xml = root / "Annotations" / f"{base}_PreviewData.xml"
        if not ir.exists():
            raise DatasetError(f"{split_file}:{lineno}: IR image {ir} does not exist")
        if paired and not rgb.exists():
            raise DatasetError(f"{split_file}:{lineno}: RGB image {rgb} does not exist")
        if not xml.exists():
            raise DatasetError(f"{ir}: image has no annotation file {xml}")
        items.append(PairedItem(base, ir, rgb if paired else None, read_voc_xml(xml, class_map)))
    return items


def coco_items(root: Path, ann_file: str, ir_dir: str, rgb_dir: str | None,
               class_map: Mapping[str, int]) -> list[PairedItem]:
    anns = read_coco_json(root / ann_file, class_map)
    items = []
    for name, ann in anns.items():
        ir = root / ir_dir / name
        if not ir.exists():
            raise DatasetError(f"{ir}: image listed in {root / ann_file} does not exist")
        rgb = root / rgb_dir / name if rgb_dir else None
        if rgb is not None and not rgb.exists():
            raise DatasetError(f"{rgb}: RGB pair of {ir} does not exist")
        items.append(PairedItem(Path(name).stem, ir, rgb, ann))
    return items


# ------------------------------------------------------------------------------------------ dataset
def filter_boxes(ann: Annotation, min_area: float = 0.0, min_height: Mapping[int, float] | None = None) -> Annotation:
    """Drop boxes below ``min_area`` px² or below a per-class height (FLIR's LAMR-style test filter)."""
    b = ann.boxes
    keep = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) > min_area
    if min_height:
        heights = b[:, 3] - b[:, 1]
        keep &= np.array([heights[i] > min_height.get(int(l), 0) for i, l in enumerate(ann.labels)], dtype=bool)
    return Annotation(b[keep], ann.labels[keep], ann.dropped, ann.clipped, ann.size, ann.degenerate, ann.difficult[keep])


DIFFICULT = ("ignore", "keep", "drop")
OFFICIAL_PAIRS = {"flir_aligned": {"train": 4129, "test": 1013}, "llvip": {"train": 12025, "test": 3463}}


class PairedDetectionDataset(Dataset):
    """Items as tensors. ``difficult`` (VOC's flag): ``ignore`` = not trained on, and marked ``iscrowd`` in
    evaluation targets so COCO-style matching ignores them (as the VOC protocol does); ``keep`` = ordinary boxes;
    ``drop`` = removed everywhere."""

    def __init__(self, items: Sequence[PairedItem], augment=None, difficult: str = "ignore", evaluation: bool = False):
        if difficult not in DIFFICULT:
            raise ValueError(f"difficult must be one of {', '.join(DIFFICULT)}, got '{difficult}'")
        self.items = list(items)
        self.augment = augment
        self.difficult, self.evaluation = difficult, evaluation

    def __len__(self) -> int:
        return len(self.items)

    def reseed(self, seed: int) -> None:
        if self.augment is not None:
            self.augment.rng = np.random.default_rng(seed)

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        ir = load_image(it.ir, "L")
        out = {"id": it.id, "ir": ir}
        if it.rgb is not None:
            rgb = load_image(it.rgb, "RGB")
            if rgb.shape[1:] != ir.shape[1:]:
                raise DatasetError(f"{it.ir} is {tuple(ir.shape[1:])} but its RGB pair {it.rgb} is {tuple(rgb.shape[1:])}")
            out["rgb"] = rgb
        hard = it.ann.difficult
        keep = ~hard if self.difficult == "drop" or (self.difficult == "ignore" and not self.evaluation) else \
            np.ones(len(hard), dtype=bool)
        boxes = torch.from_numpy(it.ann.boxes[keep].copy())
        if it.ann.size is None:  # no size in the file: clip to the image now
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ir.shape[2])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ir.shape[1])
        out["target"] = {"boxes": boxes, "labels": torch.from_numpy(it.ann.labels[keep].copy())}
        if self.evaluation:
            crowd = hard[keep] if self.difficult == "ignore" else np.zeros(int(keep.sum()), dtype=bool)
            out["target"]["iscrowd"] = torch.from_numpy(crowd.astype(np.int64))
        if self.augment is not None:
            out = self.augment(out)
        return out


def collate(batch: list[dict]) -> dict:
    out = {k: [b[k] for b in batch] for k in batch[0] if k != "target"}
    out["target"] = [b["target"] for b in batch]
    for k in ("ir", "rgb"):
        if k in out and len({tuple(t.shape) for t in out[k]}) == 1:
            out[k] = torch.stack(out[k])
    return out


class HorizontalFlip:
    """Box-aware horizontal flip of an item (albumentations' HorizontalFlip on both modalities + boxes)."""

    def __init__(self, p: float = 0.5, seed: int = 0):
        import albumentations as A

        self.p = p
        self.t = A.Compose([A.HorizontalFlip(p=1.0)], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
                           additional_targets={"rgb": "image"})
        self.rng = np.random.default_rng(seed)

    def __call__(self, item: dict) -> dict:
        if self.rng.random() >= self.p:
            return item
        ir = item["ir"].permute(1, 2, 0).numpy()
        kw = {"image": ir, "bboxes": item["target"]["boxes"].numpy(), "labels": item["target"]["labels"].numpy()}
        if "rgb" in item:
            kw["rgb"] = item["rgb"].permute(1, 2, 0).numpy()
        r = self.t(**kw)
        item = dict(item, ir=torch.from_numpy(np.ascontiguousarray(r["image"])).permute(2, 0, 1))
        if "rgb" in r:
            item["rgb"] = torch.from_numpy(np.ascontiguousarray(r["rgb"])).permute(2, 0, 1)
        item["target"] = {"boxes": torch.as_tensor(np.asarray(r["bboxes"]), dtype=torch.float32).reshape(-1, 4),
                          "labels": torch.as_tensor(np.asarray(r["labels"]), dtype=torch.int64)}
        return item


class PairedDetectionDataModule(SeededTrainData, L.LightningDataModule):
    """Official train split -> seeded train/val split (``val_ratio``); official test split -> test (no drops).

    Boxes without area are dropped and counted; an annotation file without an image (LLVIP ships some) is
    counted and skipped unless ``strict``; ``difficult`` as in :class:`PairedDetectionDataset`.
    """

    def __init__(self, root: str, format: str, class_map: Mapping[str, int], paired: bool = True,
                 val_ratio: float = 0.2, split_seed: int = 123, batch_size: int = 8, eval_batch_size: int | None = None,
                 num_workers: int = 0, min_area: float = 0.0, test_min_height: Mapping[int, float] | None = None,
                 hflip: float = 0.0, ann_file: Mapping[str, str] | None = None, ir_dir: str = "infrared",
                 rgb_dir: str | None = "visible", limit: int | None = None, difficult: str = "ignore",
                 strict: bool = False):
        super().__init__()
        if format not in ("flir_aligned", "llvip", "coco"):
            raise ValueError(f"format must be flir_aligned, llvip or coco, got '{format}'")
        if difficult not in DIFFICULT:
            raise ValueError(f"difficult must be one of {', '.join(DIFFICULT)}, got '{difficult}'")
        self.root, self.format, self.class_map, self.paired = Path(root), format, dict(class_map), paired
        self.val_ratio, self.split_seed = val_ratio, split_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.min_area, self.hflip, self.limit = num_workers, min_area, hflip, limit
        self.test_min_height = {int(k): float(v) for k, v in (test_min_height or {}).items()}
        self.ann_file = dict(ann_file or {"train": "train.json", "test": "test.json"})
        self.ir_dir, self.rgb_dir = ir_dir, rgb_dir
        self.difficult, self.strict = difficult, strict
        self.summary = DataSummary(layout=f"{format} ({root})")
        self._ready = False

    def _split_source(self, split: str) -> Path:
        if self.format == "llvip":
            return self.root / "infrared" / split
        if self.format == "flir_aligned":
            return self.root / {"train": "align_train.txt", "test": "align_validation.txt"}.get(split, f"align_{split}.txt")
        return self.root / self.ann_file[split]

    def items(self, split: str) -> list[PairedItem]:
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist ({self.format} layout, see datamodules/README.md)")
        if self.format == "llvip":
            items = llvip_items(self.root, split, self.class_map, self.paired)
        elif self.format == "flir_aligned":
            items = flir_aligned_items(self.root, split, self.class_map, self.paired)
        else:
            items = coco_items(self.root, self.ann_file[split], f"{self.ir_dir}/{split}",
                               f"{self.rgb_dir}/{split}" if self.paired and self.rgb_dir else None, self.class_map)
        if not items:
            raise DatasetError(f"{self._split_source(split)}: the {split} split of {self.format} is empty")
        if split in OFFICIAL_PAIRS.get(self.format, {}) and not self.limit:
            self.summary.expect(f"{split} pairs", OFFICIAL_PAIRS[self.format][split], len(items))
        if self.limit:
            self.summary.note(f"{split}: only the first {self.limit} of {len(items)} items (limit={self.limit})")
            items = items[: self.limit]
        where = f"{self.root} {split}"
        self.summary.drop("boxes of classes outside class_map (or COCO crowd regions)", sum(i.ann.dropped for i in items), where)
        self.summary.drop("boxes without area (xmax <= xmin or ymax <= ymin)", sum(i.ann.degenerate for i in items), where)
        clipped = sum(i.ann.clipped for i in items)
        if clipped:
            self.summary.note(f"{where}: {clipped} boxes clipped to the image")
        hard = sum(int(i.ann.difficult.sum()) for i in items)
        if hard:
            self.summary.note(f"{where}: {hard} boxes marked difficult (difficult={self.difficult})")
            self.summary.count(split, "difficult_boxes", hard)
        return items

    def _check_orphan_annotations(self, used: set[str]) -> None:
        """LLVIP keeps one Annotations/ folder for both splits; an xml without an image is counted and skipped
        (an error with ``strict``)."""
        ann_dir = self.root / "Annotations"
        orphans = sorted(p for p in ann_dir.glob("*.xml") if p.stem not in used)
        if orphans and self.strict:
            raise DatasetError(f"{orphans[0]}: annotation has no image in infrared/train or infrared/test "
                               f"({len(orphans)} such files; strict=true)")
        self.summary.drop("annotation files without an image", len(orphans), str(ann_dir))

    def _filtered(self, items: list[PairedItem], reason: str, **kw) -> None:
        before = sum(len(i.ann.labels) for i in items)
        for it in items:
            it.ann = filter_boxes(it.ann, **kw)
        self.summary.drop(reason, before - sum(len(i.ann.labels) for i in items))

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        train = self.items("train")
        self._filtered(train, f"train boxes of area <= min_area ({self.min_area} px²)", min_area=self.min_area)
        perm = np.random.default_rng(self.split_seed).permutation(len(train))
        n_val = int(round(self.val_ratio * len(train)))
        if self.val_ratio > 0 and n_val == 0:
            raise DatasetError(f"{self._split_source('train')}: {len(train)} training items: val_ratio={self.val_ratio} "
                               f"leaves no validation item; raise val_ratio")
        augment = HorizontalFlip(self.hflip, self.split_seed) if self.hflip > 0 else None
        self.train_set = PairedDetectionDataset([train[i] for i in sorted(perm[n_val:])], augment, self.difficult)
        self.val_set = PairedDetectionDataset([train[i] for i in sorted(perm[:n_val])], None, self.difficult, True)
        test = self.items("test")
        if self.format == "llvip" and not self.limit:
            self._check_orphan_annotations({i.id for i in train} | {i.id for i in test})
        self._filtered(test, "test boxes below the per-class minimum height (test_min_height)",
                       min_area=0.0, min_height=self.test_min_height)
        self.test_set = PairedDetectionDataset(test, None, self.difficult, True)
        for split, ds in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)):
            self.summary.count(split, "pairs" if self.paired else "images", len(ds))
            self.summary.count(split, "boxes", sum(len(i.ann.labels) for i in ds.items))
            self.summary.count(split, "frames_without_objects", sum(len(i.ann.labels) == 0 for i in ds.items))
        self._ready = True

    def data_summary(self) -> dict:
        return {"format": self.format, "class_map": self.class_map, **self.summary.as_dict()}

    def train_dataloader(self):
        return self.seeded_loader(self.train_set, self.batch_size, self.num_workers, collate_fn=collate)

    def val_dataloader(self):
        return eval_loader(self.val_set, self.eval_batch_size, self.num_workers, collate_fn=collate)

    def test_dataloader(self):
        return eval_loader(self.test_set, self.eval_batch_size, self.num_workers, collate_fn=collate)
