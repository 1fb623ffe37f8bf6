"""SHOT's source network: backbone -> Linear(d, 256) + BatchNorm1d (bottleneck) -> weight-normalised classifier."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from transfer.models import create_model

MODES = ("all", "cls", "clsBN", "BN", "feat")


class SHOTNet(nn.Module):
    def __init__(self, backbone: str = "resnet50", num_classes: int = 65, bottleneck: int = 256,
                 pretrained: bool | str | None = None):
        super().__init__()
        self.netF = create_model(f"classifier/{backbone}", num_classes=0, pretrained=pretrained)  # pooled features
        dim = self.netF.num_features if hasattr(self.netF, "num_features") else self.netF(torch.zeros(1, 3, 32, 32)).shape[1]
        self.netB = nn.Sequential(nn.Linear(dim, bottleneck), nn.BatchNorm1d(bottleneck))
        self.netC = weight_norm(nn.Linear(bottleneck, num_classes))
        nn.init.xavier_normal_(self.netB[0].weight)
        nn.init.zeros_(self.netB[0].bias)
        nn.init.normal_(self.netB[1].weight, 1.0, 0.02)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.netB(self.netF(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.netC(self.features(x))

    def set_trainable(self, mode: str) -> None:
        """The paper's ``--adapt`` modes: all (FT), cls (LP), clsBN, BN, feat."""
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
        for p in self.parameters():
            p.requires_grad_(mode == "all")
        if mode in ("cls", "clsBN"):
            for p in self.netC.parameters():
                p.requires_grad_(True)
        if mode in ("clsBN", "BN"):
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(True)
        if mode == "feat":
            for p in [*self.netF.parameters(), *self.netB.parameters()]:
                p.requires_grad_(True)
