"""Toy stage: give a randomly initialised tiny open_clip model a shared image-text space by contrastive training
on generated images of every style. Like web captions, each caption describes part of its image, drawn by
``caption_mix``: style and class ("a sketch of a triangle"), the class alone ("a triangle") or the style alone
("a sketch of something"). Partial captions push the embedding towards a class part shared across styles plus a
style part, the structure that text-guided adaptation relies on. A caption is a positive for every image it
describes correctly. ``style_frequency`` makes some styles rarer in the corpus.

Real runs use pretrained CLIP weights instead. The images come from their own generator seed, disjoint from the
images the adaptation uses.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from datamodules.domains import ImageDataset, build_transforms, scan_image_folder
from datamodules.synthetic import cache_key
from datamodules.synthetic.domains import generate_domains
from transfer.stages import cached_stage

TEMPLATES = {
    "both": ("{style} of a {shape}", "a {shape}, {style}", "{style} showing a {shape}"),
    "class": ("a {shape}", "a picture of a {shape}", "the {shape}"),
    "style": ("{style}", "{style} of an object", "{style} of something"),
}


def pretrain_key(spec: dict[str, Any], model_name: str) -> str:
    return cache_key({"model": model_name, **{k: v for k, v in spec.items() if k != "cache_dir"}})


def pretrain_clip(encoder, spec: dict[str, Any]) -> Path:
    """Train ``encoder.model`` (an open_clip model) once per settings; returns the cached safetensors file."""
    path = Path(spec["cache_dir"]) / f"clip-{encoder.name}-{pretrain_key(spec, encoder.name)}.safetensors"
    return cached_stage(path, lambda: _train_clip(encoder, spec))


def _train_clip(encoder, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    styles: dict[str, str] = spec["styles"]  # folder name -> words used in captions ("infrared" -> "an infrared photo")
    classes = list(spec["classes"])
    root = generate_domains(Path(spec["cache_dir"]) / f"clip-pretrain-images-{pretrain_key(spec, 'data')}",
                            domains=list(styles), classes=classes, per_class=spec["per_class"], size=spec["size"],
                            seed=spec["seed"])
    tf = build_transforms(encoder.image_size, encoder.mean, encoder.std, train=False)
    samples = []
    for di, style in enumerate(styles):
        samples += [(p, di * len(classes) + y) for p, y in scan_image_folder(root / style, classes)]
    images = ImageDataset(samples, 0, tf)
    torch.manual_seed(spec["seed"])
    rng = random.Random(spec["seed"])
    x = torch.stack([images[i][0] for i in range(len(images))])
    pair = torch.tensor([y for _, y in samples])
    model = encoder.model
    model.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.1)
    steps = spec["epochs"] * max(1, len(x) // spec["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec["lr"], total_steps=steps, pct_start=0.1)
    names = [(list(styles.values())[i // len(classes)], classes[i % len(classes)]) for i in range(len(styles) * len(classes))]
    mix = dict(spec.get("caption_mix") or {"both": 1.0})
    if set(mix) - set(TEMPLATES) or not sum(mix.values()) > 0:
        raise ValueError(f"caption_mix takes weights for {sorted(TEMPLATES)}, got {mix}")
    kinds, weights = list(mix), [float(w) for w in mix.values()]
    # how often each style appears in the corpus (e.g. a target style that is rare on the web)
    freq = spec.get("style_frequency") or {}
    sample_weight = torch.tensor([float(freq.get(list(styles)[k // len(classes)], 1.0)) for k in pair.tolist()])
    for _ in range(steps):
        idx = torch.multinomial(sample_weight, spec["batch_size"], replacement=True)
        keys = pair[idx].tolist()
        kind = rng.choices(kinds, weights, k=len(keys))
        captions = [rng.choice(TEMPLATES[c]).format(style=names[k][0], shape=names[k][1]) for k, c in zip(keys, kind)]
        img = F.normalize(model.encode_image(x[idx]), dim=-1)
        txt = F.normalize(model.encode_text(encoder.tokenizer(captions)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        style_id = torch.tensor([k // len(classes) for k in keys])
        class_id = torch.tensor([k % len(classes) for k in keys])
        says_style = torch.tensor([c != "class" for c in kind])
        says_class = torch.tensor([c != "style" for c in kind])
        # image i matches caption j when every attribute the caption names is the image's
        match = ((~says_style[None, :]) | (style_id[:, None] == style_id[None, :])) & \
                ((~says_class[None, :]) | (class_id[:, None] == class_id[None, :]))
        match = match.float()
        to_text = match / match.sum(1, keepdim=True)
        to_image = match.T / match.T.sum(1, keepdim=True)
        loss = 0.5 * ((-to_text * logits.log_softmax(1)).sum(1).mean() + (-to_image * logits.T.log_softmax(1)).sum(1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.requires_grad_(False)
    model.eval()
    return model.state_dict()
