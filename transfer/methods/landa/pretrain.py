"""Toy stage: give a randomly initialised tiny open_clip model a shared image-text space by contrastive training
on generated images of every style, captioned with their style and class ("a sketch of a triangle"). Styles in
``style_only`` ({style: probability}) are often captioned by style alone ("an infrared photo of something"): the
model learns what the style looks like but rarely pairs it with a class, so classifying that style is partly a
compositional step, as for a domain that web captions seldom describe together with the object.

Real runs use pretrained CLIP weights instead. The images come from their own generator seed, disjoint from the
images the adaptation uses.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from datamodules.domains import ImageDataset, build_transforms, scan_image_folder
from datamodules.synthetic.domains import generate_domains

CAPTIONS = ("{style} of a {shape}", "a {shape}, {style}", "{style} showing a {shape}")
STYLE_ONLY = ("{style}", "{style} of an object", "{style} of something")  # the class is never named


def pretrain_key(spec: dict[str, Any], model_name: str) -> str:
    blob = json.dumps({"model": model_name, **{k: v for k, v in spec.items() if k != "cache_dir"}}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def pretrain_clip(encoder, spec: dict[str, Any]) -> Path:
    """Train ``encoder.model`` (an open_clip model) once per settings; returns the cached safetensors file."""
    path = Path(spec["cache_dir"]) / f"clip-{encoder.name}-{pretrain_key(spec, encoder.name)}.safetensors"
    if path.exists():
        return path
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
    style_only = {styles[s]: float(p) for s, p in (spec.get("style_only") or {}).items()}
    for _ in range(steps):
        idx = torch.randint(len(x), (spec["batch_size"],))
        keys = pair[idx].tolist()
        no_class = [rng.random() < style_only.get(names[k][0], 0.0) for k in keys]
        captions = [rng.choice(STYLE_ONLY if nc else CAPTIONS).format(style=names[k][0], shape=names[k][1])
                    for k, nc in zip(keys, no_class)]
        img = F.normalize(model.encode_image(x[idx]), dim=-1)
        txt = F.normalize(model.encode_text(encoder.tokenizer(captions)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        group = torch.tensor([k // len(classes) if nc else len(names) + k for k, nc in zip(keys, no_class)])
        same = (group[:, None] == group[None, :]).float()  # captions that say the same thing are positives
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.T.log_softmax(1), 1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.requires_grad_(False)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return path
