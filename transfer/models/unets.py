"""Segmentation networks with named module groups (Shallow, Encoding, Deep, Decoding) that fine-tuning and
adapters can target: MONAI's UNet, and a port of the SAH study's "multi-view" network (``mv``) with
``spatial_dims`` 2 or 3 (dilated multi-branch skip blocks; 232,737 parameters in 2-D at level 2)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from transfer.models.registry import names_from, register_family

GROUPS = ("shallow", "encoding", "deep", "decoding")


class GroupedUNet(UNet):
    """MONAI ``UNet`` + ``adapter_groups``: outermost encoder/decoder = shallow, bottom + innermost decoder = deep."""

    @property
    def adapter_groups(self) -> dict[str, list[str]]:
        enc, dec, prefix, node = [], [], "model", self.model
        while isinstance(node, nn.Sequential) and len(node) == 3:
            enc.append(f"{prefix}.0")
            dec.append(f"{prefix}.2")
            prefix, node = f"{prefix}.1.submodule", node[1].submodule
        return {"shallow": [enc[0], dec[0]], "encoding": enc, "deep": [prefix, dec[-1]], "decoding": dec}

    @property
    def size_divisor(self) -> int:
        return int(math.prod(self.strides))


def _conv(spatial_dims: int, i: int, o: int, k: int = 3, dilation: int = 1) -> nn.Module:
    return (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(i, o, k, padding=dilation * (k // 2), dilation=dilation)


def _bn(spatial_dims: int, c: int) -> nn.Module:
    return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(c)


def _m1(sd: int, i: int, o: int) -> nn.Sequential:
    """Two Conv3x3-BN-ReLU."""
    return nn.Sequential(_conv(sd, i, o), _bn(sd, o), nn.ReLU(inplace=True), _conv(sd, o, o), _bn(sd, o), nn.ReLU(inplace=True))


class M2(nn.Module):
    """Dilated Conv-BN-ReLU with dilations 1, 2, 4 in sequence; output concatenated with the input."""

    def __init__(self, sd: int, c: int):
        super().__init__()
        self.body = nn.Sequential(*[m for d in (1, 2, 4) for m in (_conv(sd, c, c, dilation=d), _bn(sd, c), nn.ReLU(inplace=True))])

    def forward(self, x):
        return torch.cat([self.body(x), x], 1)


class Down(nn.Module):
    def __init__(self, sd: int, c: int):
        super().__init__()
        self.m1, self.m2, self.sd = _m1(sd, c, c), M2(sd, c), sd

    def forward(self, x):
        pool = F.max_pool2d if self.sd == 2 else F.max_pool3d
        return pool(self.m1(x), 2), self.m2(x)


class Up(nn.Module):
    def __init__(self, sd: int, i: int, o: int):
        super().__init__()
        self.m1, self.mode = _m1(sd, i, o), "bilinear" if sd == 2 else "trilinear"

    def forward(self, x, skip):
        y = F.interpolate(self.m1(x), size=skip.shape[2:], mode=self.mode, align_corners=False)
        return torch.cat([y, skip], 1)


class MVNet(nn.Module):
    """M1 -> Down x level -> M2 (bottom) -> Up x level -> M3 (two Conv-BN-ReLU + 1x1 conv to the logits)."""

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1, width: int = 32, level: int = 2):
        super().__init__()
        sd, w = spatial_dims, width
        self.m1 = _m1(sd, in_channels, w)
        self.downs = nn.ModuleList(Down(sd, w) for _ in range(level))
        self.bottom = M2(sd, w)
        self.ups = nn.ModuleList(Up(sd, 2 * w if i == 0 else 3 * w, w) for i in range(level))
        self.m3 = nn.Sequential(_conv(sd, 3 * w, w), _bn(sd, w), nn.ReLU(inplace=True), _conv(sd, w, w), _bn(sd, w),
                                nn.ReLU(inplace=True), _conv(sd, w, out_channels, k=1))

    def forward(self, x):
        h, skips = self.m1(x), []
        for down in self.downs:
            h, skip = down(h)
            skips.append(skip)
        h = self.bottom(h)
        for up, skip in zip(self.ups, reversed(skips)):
            h = up(h, skip)
        return self.m3(h)

    @property
    def size_divisor(self) -> int:
        return 2 ** len(self.downs)

    @property
    def adapter_groups(self) -> dict[str, list[str]]:
        n = len(self.downs)
        return {"shallow": ["m1", "m3"], "encoding": ["m1"] + [f"downs.{i}.m1" for i in range(n)],
                "deep": [f"downs.{n - 1}.m1", "ups.0.m1"], "decoding": [f"ups.{i}.m1" for i in range(n)] + ["m3"]}


def forward_any_size(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` for any spatial size: zero-padded (centred) up to a multiple of the network's down-sampling
    factor, the output cropped back. A whole CT volume of 47x49x11 voxels is as valid as 48x48x16."""
    k = getattr(net, "size_divisor", 1)
    spatial = x.shape[2:]
    pad = [(-s) % k for s in spatial]
    if not any(pad):
        return net(x)
    widths = [w for p in reversed(pad) for w in (p // 2, p - p // 2)]  # F.pad: last dimension first
    y = net(F.pad(x, widths))
    return y[(..., *(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial)))]


@register_family("segmentation", names_from(("unet", "mv")))
def create_segmentation_net(name: str = "unet", spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1,
                            channels: Sequence[int] = (8, 16, 32), strides: Sequence[int] = (2, 2),
                            num_res_units: int = 1, width: int = 32, level: int = 2) -> nn.Module:
    nets = {"unet": lambda: GroupedUNet(spatial_dims, in_channels, out_channels, tuple(channels), tuple(strides),
                                        num_res_units=num_res_units),
            "mv": lambda: MVNet(spatial_dims, in_channels, out_channels, width, level)}
    if name not in nets:
        raise ValueError(f"unknown segmentation network '{name}'; use {' or '.join(nets)}")
    return nets[name]()

