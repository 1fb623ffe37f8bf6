"""Non-learned "translators" for the ModTr baselines: identity (zero-shot / fine-tuning) and histogram
equalisation (the paper's Table 1 no-learning row); ``build_translator`` makes any translator from its spec."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transfer.models.translators import create_translator


class IdentityTranslator(nn.Module):
    """Feeds the image as it is (1 channel repeated to 3)."""

    fusion = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class HistEqTranslator(nn.Module):
    """Per-image histogram equalisation of the (grey) input over 256 levels, repeated to 3 channels."""

    fusion = "histeq"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(1) if x.shape[1] > 1 else x[:, 0]
        levels = (grey.clamp(0, 1) * 255).round().long().flatten(1)  # [B, HW]
        hist = torch.zeros(levels.shape[0], 256, device=x.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float))
        cdf = hist.cumsum(1)
        cdf_min = cdf.gather(1, levels.min(1, keepdim=True).values)
        lut = ((cdf - cdf_min) / (cdf[:, -1:] - cdf_min).clamp_min(1)).clamp(0, 1)
        out = lut.gather(1, levels).view_as(grey)
        return out[:, None].expand(-1, 3, -1, -1)


def build_translator(spec: dict[str, Any]) -> torch.nn.Module:
    spec = dict(spec)
    name = spec.pop("name", "unet")
    if name == "identity":
        return IdentityTranslator()
    if name == "histeq":
        return HistEqTranslator()
    return create_translator(name, **spec)
