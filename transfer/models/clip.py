"""Frozen CLIP encoders through open_clip: any open_clip model name, weights from ``weights/`` (never downloaded).

``landa-tiny`` (``clip_configs/landa-tiny.json``) is a small config for CPU toys.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from torch import nn

from transfer.weights import resolve

from transfer.safeload import load_state_dict
from transfer.statedict import require_fit

open_clip.add_model_config(Path(__file__).with_name("clip_configs"))


class UnknownClipModelError(ValueError):
    pass


class ClipHubError(RuntimeError):
    """The model would fetch parts from the Hugging Face hub at run time."""


def _refuse_hub_downloads(name: str) -> None:
    """Some open_clip models (SigLIP, the RoBERTa/XLM-R text towers) fetch a tokenizer or a text model from the
    Hugging Face hub when built, retrying for a long time offline. Fail at once instead, unless the hub runs
    offline on its local cache (``HF_HUB_OFFLINE=1``), where nothing is downloaded."""
    text = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    hub = sorted({v for k, v in text.items() if k in ("hf_model_name", "hf_tokenizer_name") and v})
    if hub and os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        raise ClipHubError(f"open_clip model '{name}' builds its tokenizer / text tower from the Hugging Face hub "
                           f"({', '.join(hub)}); nothing is downloaded during a run. Fetch them once "
                           f"(huggingface-cli download {hub[0]}) and run with HF_HUB_OFFLINE=1 to read them from the "
                           f"local cache, or pick a model without hub parts (e.g. ViT-B-16)")


class FrozenClip(nn.Module):
    """An open_clip model in eval mode with gradients off; ``identity`` names model + weights (cache keys)."""

    def __init__(self, name: str, pretrained: str | None = None):
        super().__init__()
        models = open_clip.list_models()
        if name not in models:
            close = difflib.get_close_matches(name, models, n=6, cutoff=0.5)
            raise UnknownClipModelError(f"unknown open_clip model '{name}'"
                                        + (f"; close names: {', '.join(close)}" if close else "")
                                        + f" (open_clip.list_models() has {len(models)})")
        self.name = name
        _refuse_hub_downloads(name)
        path = resolve(pretrained) if pretrained else None  # registry name or path; clear error when absent
        self.model = open_clip.create_model(name, pretrained=None)
        self.identity = f"{name}:random-init"
        if path is not None:
            self.load_weights(path)
        self.tokenizer = open_clip.get_tokenizer(name)
        cfg = self.model.visual.preprocess_cfg if hasattr(self.model.visual, "preprocess_cfg") else {}
        self.image_size = int(open_clip.get_model_config(name)["vision_cfg"]["image_size"])
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: str | Path) -> None:
        path = Path(path)
        state = load_state_dict(path)
        require_fit(self.model.state_dict(), state, str(path), f"CLIP model {self.name}")
        self.model.load_state_dict(state)
        stat = path.stat()
        self.identity = f"{self.name}:{path.name}:{stat.st_size}:{stat.st_mtime_ns}"

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.model.encode_image(images).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(next(self.model.parameters()).device)
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def class_text(self, templates: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
        """(C, d): per class, the normalised mean over templates ("a sketch of a {}") of the text embeddings."""
        names = [c.replace("_", " ").lower() for c in classes]
        per_template = torch.stack([self.encode_texts([t.format(n) for n in names]) for t in templates])
        return nn.functional.normalize(per_template.mean(0), dim=-1)
