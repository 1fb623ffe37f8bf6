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

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.domains import ImageDataset, build_transforms, scan_image_folder
from datamodules.synthetic import cache_key
from datamodules.synthetic.domains import generate_domains
from transfer.stages import cached_stage, stage_file, stage_trainer

WEIGHT_DECAY = 0.1

TEMPLATES = {
    "both": ("{style} of a {shape}", "a {shape}, {style}", "{style} showing a {shape}"),
    "class": ("a {shape}", "a picture of a {shape}", "the {shape}"),
    "style": ("{style}", "{style} of an object", "{style} of something"),
}


def pretrain_key(spec: dict[str, Any], model_name: str) -> str:
    return cache_key({"model": model_name, **{k: v for k, v in spec.items() if k != "cache_dir"}})


def pretrain_clip(encoder, spec: dict[str, Any], run=None) -> Path:
    """Train ``encoder.model`` (an open_clip model) once per settings, the way the ``run`` Trainer trains (device,
    precision); returns the cached safetensors file."""
    path = stage_file(spec["cache_dir"], f"clip-{encoder.name}", {"model": encoder.name, **spec},
                      code=(__name__, "transfer.models.clip"), run=run)
    return cached_stage(path, lambda: _train_clip(encoder, spec, run))


def _draw_batches(spec: dict[str, Any], pair: torch.Tensor, styles: dict[str, str], classes: list[str]) -> list[dict]:
    """Every step's images and captions, drawn up front (torch's global stream for images, ``random.Random(seed)``
    for captions) so that the training loop itself draws nothing."""
    steps = spec["epochs"] * max(1, len(pair) // spec["batch_size"])
    rng = random.Random(spec["seed"])
    names = [(list(styles.values())[i // len(classes)], classes[i % len(classes)]) for i in range(len(styles) * len(classes))]
    mix = dict(spec.get("caption_mix") or {"both": 1.0})
    if set(mix) - set(TEMPLATES) or not sum(mix.values()) > 0:
        raise ValueError(f"caption_mix takes weights for {sorted(TEMPLATES)}, got {mix}")
    kinds, weights = list(mix), [float(w) for w in mix.values()]
    # how often each style appears in the corpus (e.g. a target style that is rare on the web)
    freq = spec.get("style_frequency") or {}
    sample_weight = torch.tensor([float(freq.get(list(styles)[k // len(classes)], 1.0)) for k in pair.tolist()])
    batches = []
    for _ in range(steps):
        idx = torch.multinomial(sample_weight, spec["batch_size"], replacement=True)
        keys = pair[idx].tolist()
        kind = rng.choices(kinds, weights, k=len(keys))
        batches.append({
            "index": idx,
            "captions": [rng.choice(TEMPLATES[c]).format(style=names[k][0], shape=names[k][1]) for k, c in zip(keys, kind)],
            "style": torch.tensor([k // len(classes) for k in keys]),
            "cls": torch.tensor([k % len(classes) for k in keys]),
            "says_style": torch.tensor([c != "class" for c in kind]),
            "says_class": torch.tensor([c != "style" for c in kind]),
        })
    return batches


class _UsedTokenRows(nn.Module):
    """Stands in for a token embedding while only the rows ``used`` by the captions can get a gradient: those rows
    are the trained parameter, so AdamW's moments and updates cover a few hundred rows, not the tokenizer's whole
    vocabulary (49408 rows, nearly nine tenths of the tiny CLIP's parameters). The other rows get a zero gradient in
    the full table, where AdamW only decays them by (1 - lr * weight_decay) per step: ``decay`` does that to the
    table, and ``write_back`` puts the trained rows into it, so the table ends as full-table training leaves it."""

    def __init__(self, table: nn.Embedding, used: torch.Tensor):
        super().__init__()
        self.__dict__["table"] = table  # not a submodule: its weight is not among the trained parameters
        self.used = used
        self.rows = nn.Parameter(table.weight.detach()[used].clone())
        index = torch.full((table.num_embeddings,), -1, dtype=torch.long)
        index[used] = torch.arange(len(used))
        self.register_buffer("index", index, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.index[tokens], self.rows)

    @torch.no_grad()
    def decay(self, factor: float) -> None:
        self.table.weight.mul_(factor)

    @torch.no_grad()
    def write_back(self) -> nn.Embedding:
        self.table.weight[self.used.to(self.table.weight.device)] = self.rows.to(self.table.weight.device)
        return self.table


class _ContrastiveStage(L.LightningModule):
    """CLIP's symmetric contrastive loss where a caption is a positive for every image it describes correctly."""

    def __init__(self, model, images: torch.Tensor, tokens: torch.Tensor, lr: float, steps: int):
        super().__init__()
        self.model, self.lr, self.steps = model, lr, steps
        self.register_buffer("images", images, persistent=False)
        self.register_buffer("tokens", tokens, persistent=False)  # one row per distinct caption

    def training_step(self, batch, batch_idx):
        img = F.normalize(self.model.encode_image(self.images[batch["index"]]), dim=-1)
        txt = F.normalize(self.model.encode_text(self.tokens[batch["caption"]]), dim=-1)
        logits = self.model.logit_scale.exp() * img @ txt.T
        says_style, says_class, style, cls = batch["says_style"], batch["says_class"], batch["style"], batch["cls"]
        # image i matches caption j when every attribute the caption names is the image's
        match = ((~says_style[None, :]) | (style[:, None] == style[None, :])) & \
                ((~says_class[None, :]) | (cls[:, None] == cls[None, :]))
        match = match.float()
        to_text = match / match.sum(1, keepdim=True)
        to_image = match.T / match.T.sum(1, keepdim=True)
        return 0.5 * ((-to_text * logits.log_softmax(1)).sum(1).mean() + (-to_image * logits.T.log_softmax(1)).sum(1).mean())

    def on_before_optimizer_step(self, optimizer) -> None:
        rows = self.model.token_embedding
        if isinstance(rows, _UsedTokenRows):  # the rest of the table, decayed as AdamW decays it in this step
            group = optimizer.param_groups[0]
            rows.decay(1 - group["lr"] * group["weight_decay"])

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=WEIGHT_DECAY, foreach=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=self.steps, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _train_clip(encoder, spec: dict[str, Any], run=None, used_rows_only: bool = True) -> dict[str, torch.Tensor]:
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
    x = torch.stack([images[i][0] for i in range(len(images))])
    batches = _draw_batches(spec, torch.tensor([y for _, y in samples]), styles, classes)
    # a few dozen distinct captions, each tokenized once; a batch carries their row numbers
    distinct = sorted({c for b in batches for c in b["captions"]})
    row = {c: i for i, c in enumerate(distinct)}
    for b in batches:
        b["caption"] = torch.tensor([row[c] for c in b.pop("captions")])
    model = encoder.model
    model.requires_grad_(True)
    model.train()  # Lightning keeps each module's mode; the encoder arrives in eval mode
    tokens = encoder.tokenizer(distinct)
    if used_rows_only:
        model.token_embedding = _UsedTokenRows(model.token_embedding, torch.unique(tokens))
    stage = _ContrastiveStage(model, x, tokens, spec["lr"], len(batches))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    try:
        stage_trainer(run, max_epochs=1, max_steps=len(batches), num_sanity_val_steps=0).fit(stage, loader)
    finally:
        if used_rows_only:
            model.token_embedding = model.token_embedding.write_back()
    model.requires_grad_(False)
    model.cpu().eval()  # back where the encoder keeps it, whatever device the stage trained on
    return model.state_dict()
