"""Paired RGB/IR street-like scenes (person, bicycle, car) written in the LLVIP layout with VOC xml.

Same geometry in both modalities, different appearance: RGB objects carry a class colour on a busy,
colourful background; IR objects carry a class "temperature" on a cool, low-contrast background, with
sensor noise and optics blur. An RGB detector learns colour and fails on IR — the ModTr setting.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

from ..detection import PairedDetectionDataModule
from ._cache import build_once, cache_key

CLASSES = ("person", "bicycle", "car")
RGB_COLOURS = {"person": (0.85, 0.15, 0.15), "bicycle": (0.15, 0.8, 0.2), "car": (0.15, 0.3, 0.9)}
IR_LEVELS = {"person": (0.80, 0.95), "bicycle": (0.45, 0.60), "car": (0.55, 0.75)}


def _smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = Image.fromarray(rng.standard_normal((4, 4)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32)


def _box(rng, cls, size):
    if cls == "person":
        h = rng.uniform(0.2, 0.4) * size
        w = h * rng.uniform(0.35, 0.5)
    elif cls == "bicycle":
        w = rng.uniform(0.2, 0.35) * size
        h = w * rng.uniform(0.55, 0.7)
    else:
        w = rng.uniform(0.25, 0.45) * size
        h = w * rng.uniform(0.4, 0.55)
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
    return np.array([x0, y0, x0 + w, y0 + h])


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _mask(cls, box, size) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if cls == "person":
        return ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1
    if cls == "bicycle":
        r = h * 0.32
        m = np.zeros((size, size), bool)
        for wx in (x0 + r, x1 - r):
            d = np.hypot(xx - wx, yy - (y1 - r))
            m |= (d <= r) & (d >= r * 0.55)
        m |= (xx >= x0 + r) & (xx <= x1 - r) & (yy >= y0 + 0.2 * h) & (yy <= y0 + 0.35 * h)
        return m
    body = (xx >= x0) & (xx <= x1) & (yy >= y0 + 0.3 * h) & (yy <= y1)
    cabin = (xx >= x0 + 0.25 * w) & (xx <= x1 - 0.25 * w) & (yy >= y0) & (yy <= y0 + 0.3 * h)
    return body | cabin


def render_scene(rng: np.random.Generator, size: int, max_objects: int = 4):
    """-> (rgb uint8 [S,S,3], ir uint8 [S,S], [(class, xyxy box)])."""
    rgb = 0.45 + 0.25 * np.stack([_smooth_field(rng, size) for _ in range(3)], -1) + rng.uniform(-0.1, 0.1, 3)
    ir = 0.25 + 0.08 * _smooth_field(rng, size)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        for _attempt in range(20):
            box = _box(rng, cls, size)
            if all(_iou(box, b) <= 0.2 for _, b in objects):
                break
        else:
            continue
        m = _mask(cls, box, size)
        colour = np.array(RGB_COLOURS[cls]) + rng.uniform(-0.1, 0.1, 3)
        rgb[m] = colour + rng.normal(0, 0.03, (m.sum(), 3))
        ir[m] = rng.uniform(*IR_LEVELS[cls]) + rng.normal(0, 0.03, m.sum())
        objects.append((cls, box))
    ir = ir + rng.normal(0, 0.04, ir.shape)
    padded = np.pad(ir, 1, mode="edge")  # 3x3 box blur: the optics
    ir = sum(padded[dy:dy + size, dx:dx + size] for dy in range(3) for dx in range(3)) / 9.0
    to8 = lambda a: (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
    return to8(rgb), to8(ir), objects


def _voc_xml(stem: str, size: int, objects) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{stem}.png"
    s = ET.SubElement(root, "size")
    for k, v in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(s, k).text = str(v)
    for cls, box in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = cls
        bb = ET.SubElement(o, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, k).text = f"{v:.1f}"
    return ET.tostring(root)


def generate_rgbir(root: str | Path, n_train: int = 800, n_test: int = 200, size: int = 64,
                   max_objects: int = 4, seed: int = 0) -> Path:
    """Write ``root/{infrared,visible}/{train,test}/<id>.png`` + ``root/Annotations/<id>.xml`` once."""
    root = Path(root)
    if (root / "meta.json").exists():
        return root
    meta = dict(n_train=n_train, n_test=n_test, size=size, max_objects=max_objects, seed=seed)
    with build_once(root, meta) as tmp:
        (tmp / "Annotations").mkdir()
        for split, n, offset in (("train", n_train, 0), ("test", n_test, 1)):
            for mod in ("infrared", "visible"):
                (tmp / mod / split).mkdir(parents=True)
            rng = np.random.default_rng([seed, offset])
            for i in range(n):
                stem = f"{split}_{i:05d}"
                rgb, ir, objects = render_scene(rng, size, max_objects)
                Image.fromarray(rgb).save(tmp / "visible" / split / f"{stem}.png")
                Image.fromarray(ir).save(tmp / "infrared" / split / f"{stem}.png")
                (tmp / "Annotations" / f"{stem}.xml").write_bytes(_voc_xml(stem, size, objects))
    return root


class SyntheticRGBIRDataModule(PairedDetectionDataModule):
    """The real LLVIP-layout reader over a generated set, cached under ``cache_dir`` by its settings."""

    def __init__(self, cache_dir: str, n_train: int = 800, n_test: int = 200, size: int = 64, max_objects: int = 4,
                 seed: int = 0, class_map: dict[str, int] | None = None, **kwargs):
        self.gen_kwargs = dict(n_train=n_train, n_test=n_test, size=size, max_objects=max_objects, seed=seed)
        super().__init__(root=str(Path(cache_dir) / f"synthetic_rgbir-{cache_key(self.gen_kwargs)}"), format="llvip",
                         class_map=class_map or {"person": 1, "bicycle": 2, "car": 3}, **kwargs)
        self.summary.compare_official = False  # generated in a real layout, not the release

    def prepare_data(self) -> None:
        generate_rgbir(self.root, **self.gen_kwargs)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)
