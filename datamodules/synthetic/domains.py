"""Shapes rendered in visually distinct styles (photo, sketch, painting, infrared), as an ImageFolder tree.

Every domain draws the same kind of scene (one shape of a class at a random pose on a background);
only the appearance mapping differs, which is what a domain shift is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..domains import DomainDataModule
from ._cache import build_once, cache_key

SHAPES = ("circle", "square", "triangle", "cross", "star")
STYLES = ("photo", "sketch", "painting", "infrared")


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "cross":
        w = 0.35
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    elif shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45) * math.cos(a), (1.0 if i % 2 == 0 else 0.45) * math.sin(a))
               for i, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)]
    else:
        raise ValueError(shape)
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, geom: tuple, fill=None, outline=None, width: int = 1):
    cx, cy, r, rot = geom
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    else:
        pts = _polygon(shape, cx, cy, r, rot)
        if fill is not None:
            draw.polygon(pts, fill=fill)
        if outline is not None:
            draw.line(pts + [pts[0]], fill=outline, width=width, joint="curve")


def _contrasting_color(rng: np.random.Generator, background: np.ndarray, low: float, high: float) -> tuple:
    """A random colour whose brightness differs from the background's by at least 70 levels."""
    while True:
        color = rng.uniform(low, high, 3)
        if abs(color.mean() - background.mean()) >= 70:
            return tuple(int(v) for v in color)


def render(shape: str, style: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``shape`` in ``style``; all randomness comes from ``rng``."""
    r = rng.uniform(0.28, 0.4) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    geom = (cx, cy, r, rng.uniform(0, 2 * math.pi))
    if style == "photo":
        base = rng.uniform(60, 200, size=3)
        ramp = np.linspace(-40, 40, size)[None, :, None] * rng.choice([-1, 1])
        bg = np.clip(base + ramp + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(bg)
        _draw_shape(ImageDraw.Draw(im), shape, geom, fill=_contrasting_color(rng, base, 0, 255))
        return im
    if style == "sketch":
        im = Image.new("RGB", (size, size), (245, 245, 240))
        ink = int(rng.uniform(0, 60))
        _draw_shape(ImageDraw.Draw(im), shape, geom, outline=(ink, ink, ink), width=int(rng.integers(1, 3)))
        return im
    if style == "painting":
        base = rng.uniform(100, 255, 3)
        im = Image.new("RGB", (size, size), tuple(int(v) for v in base))
        draw = ImageDraw.Draw(im)
        for _ in range(6):  # brush strokes in the background
            x0, y0 = rng.uniform(0, size, 2)
            draw.line([(x0, y0), (x0 + rng.uniform(-size, size) / 2, y0 + rng.uniform(-size, size) / 2)],
                      fill=tuple(int(v) for v in rng.uniform(80, 255, 3)), width=int(rng.integers(2, 5)))
        _draw_shape(draw, shape, geom, fill=_contrasting_color(rng, base, 0, 255))
        return im.filter(ImageFilter.GaussianBlur(radius=0.9)).quantize(12).convert("RGB")
    if style == "infrared":
        bg = np.clip(rng.uniform(20, 70) + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
        im = Image.fromarray(bg, mode="L")
        _draw_shape(ImageDraw.Draw(im), shape, geom, fill=int(rng.uniform(170, 250)))
        return im.filter(ImageFilter.GaussianBlur(radius=1.2)).convert("RGB")
    raise ValueError(f"unknown style '{style}'; known: {', '.join(STYLES)}")


def generate_domains(root: str | Path, domains: Sequence[str] = STYLES, classes: Sequence[str] = SHAPES,
                     per_class: int = 40, size: int = 32, seed: int = 0,
                     per_domain: Mapping[str, int] | None = None) -> Path:
    """Write ``root/<domain>/<class>/<i>.png``; written to a temporary folder then renamed into place.
    ``per_domain`` sets other image counts per class for some domains; a domain's first images do not depend on
    its count."""
    root = Path(root)
    if (root / "meta.json").exists():
        return root
    per_domain = dict(per_domain or {})
    if set(per_domain) - set(domains):
        raise ValueError(f"per_domain names domains that are not generated: {sorted(set(per_domain) - set(domains))} "
                         f"(domains: {list(domains)})")
    meta = dict(domains=list(domains), classes=list(classes), per_class=per_class, size=size, seed=seed)
    if per_domain:
        meta["per_domain"] = per_domain
    with build_once(root, meta) as tmp:
        for di, domain in enumerate(domains):
            for ci, cls in enumerate(classes):
                folder = tmp / domain / cls
                folder.mkdir(parents=True)
                rng = np.random.default_rng([seed, di, ci])
                for i in range(per_domain.get(domain, per_class)):
                    render(cls, domain, size, rng).save(folder / f"{i:04d}.png")
    return root


class SyntheticDomainDataModule(DomainDataModule):
    """The real :class:`DomainDataModule` over a generated tree, cached under ``cache_dir`` by its settings."""

    def __init__(self, cache_dir: str, domains: Sequence[str] = STYLES, classes: Sequence[str] = SHAPES,
                 per_class: int = 40, size: int = 32, seed: int = 0, target_per_class: int | None = None, **kwargs):
        """``target_per_class``: images per class of the target domains (default ``per_class``); a larger target
        set measures target accuracy with less sampling noise and leaves the sources as they are."""
        self.gen_kwargs = dict(domains=list(domains), classes=list(classes), per_class=per_class, size=size, seed=seed)
        if target_per_class is not None:
            if not kwargs.get("targets"):
                raise ValueError(f"target_per_class={target_per_class} but no target domain is given (targets=...)")
            self.gen_kwargs["per_domain"] = {t: int(target_per_class) for t in kwargs["targets"]}
        kwargs.setdefault("image_size", size)
        super().__init__(root=str(Path(cache_dir) / f"synthetic_domains-{cache_key(self.gen_kwargs)}"), dataset="custom",
                         classes=classes, **kwargs)
        self.summary.compare_official = False  # generated in a real layout, not the release

    def prepare_data(self) -> None:
        generate_domains(self.root, **self.gen_kwargs)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # idempotent; also covers direct use outside a Trainer
        super().setup(stage)
