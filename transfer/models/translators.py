"""Image-to-image translators for ModTr: a UNet on a timm encoder, a tiny UNet, the fusions, and the non-learned
baselines (identity, histogram equalisation).

A translator maps an IR image in [0,1] (1 channel, repeated to 3) to a 3-channel image in [0,1]
(sigmoid), which is fused with the input: ``none`` x̂ = t, ``mul`` x̂ = clip(x ⊙ t) (ModTr⊙),
``add`` x̂ = (x + t) / 2, ``attn`` per-pixel softmax weights over the channel sums of x and t.
Inputs of any size are padded to the UNet's stride and cropped back.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from transfer.models.registry import names_from, register_family
from transfer.weights import resolve
from transfer.safeload import load_state_dict

ENCODER_ALIASES = {"mobilenet_v2": "mobilenetv2_100", "mobilenet_v3_small": "mobilenetv3_small_100"}
FUSIONS = ("none", "mul", "add", "attn")


def _conv_bn_relu(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """3 levels (channels 16/32/64), max-pool down, nearest up with skip concatenation; ~58k parameters."""

    stride = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 3, channels: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        a, b, c = channels
        self.enc1 = nn.Sequential(_conv_bn_relu(in_channels, a), _conv_bn_relu(a, a))
        self.enc2 = nn.Sequential(_conv_bn_relu(a, b), _conv_bn_relu(b, b))
        self.mid = nn.Sequential(_conv_bn_relu(b, c), _conv_bn_relu(c, c))
        self.dec2 = nn.Sequential(_conv_bn_relu(c + b, b), _conv_bn_relu(b, b))
        self.dec1 = nn.Sequential(_conv_bn_relu(b + a, a), _conv_bn_relu(a, a))
        self.out = nn.Conv2d(a, out_channels, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return self.out(d1)


class EncoderUNet(nn.Module):
    """UNet decoder (channels 256/128/64/32/16, as smp's default) on a timm ``features_only`` encoder."""

    def __init__(self, encoder: str = "resnet34", pretrained: str | None = None, out_channels: int = 3,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)):
        super().__init__()
        encoder = ENCODER_ALIASES.get(encoder, encoder)
        if not timm.is_model(encoder):
            raise ValueError(f"unknown translator encoder '{encoder}'; e.g. resnet34, resnet18, mobilenet_v2, "
                             "mobilenet_v3_small or any timm model name")
        self.encoder = timm.create_model(encoder, pretrained=False, features_only=True)
        if pretrained:
            state = load_state_dict(resolve(pretrained))
            missing, _ = self.encoder.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{pretrained}: {len(missing)} encoder tensors missing (e.g. {missing[0]})")
        skips = self.encoder.feature_info.channels()  # shallow -> deep
        self.stride = self.encoder.feature_info.reduction()[-1]
        ins = [skips[-1]] + list(decoder_channels[:-1])
        skip_ch = list(reversed(skips[:-1])) + [0] * (len(decoder_channels) - len(skips) + 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(i + s, o), _conv_bn_relu(o, o))
            for i, s, o in zip(ins, skip_ch, decoder_channels)
        )
        self.head = nn.Conv2d(decoder_channels[-1], out_channels, 3, padding=1)

    def forward(self, x):
        feats = self.encoder(x)
        y, skips = feats[-1], list(reversed(feats[:-1]))
        for i, block in enumerate(self.blocks):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            if i < len(skips):
                if y.shape[-2:] != skips[i].shape[-2:]:
                    y = F.interpolate(y, size=skips[i].shape[-2:], mode="nearest")
                y = torch.cat([y, skips[i]], 1)
            y = block(y)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="nearest")
        return self.head(y)


def fuse(x3: torch.Tensor, t: torch.Tensor, fusion: str) -> torch.Tensor:
    if fusion == "none":
        return t
    if fusion == "mul":
        return (x3 * t).clamp(0, 1)
    if fusion == "add":
        return (x3 + t) / 2
    if fusion == "attn":
        a, b = x3.sum(1, keepdim=True), t.sum(1, keepdim=True)
        w = torch.softmax(torch.cat([a, b, torch.zeros_like(a)], 1), dim=1)  # the 0 logit keeps DenseFuse's +ε term
        return w[:, :1] * x3 + w[:, 1:2] * t
    raise ValueError(f"unknown fusion '{fusion}'; use one of {', '.join(FUSIONS)}")


class ModalityTranslator(nn.Module):
    """IR [B,1|3,H,W] in [0,1] -> detector input [B,3,H,W] in [0,1]."""

    def __init__(self, net: nn.Module, fusion: str = "mul"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion '{fusion}'; use one of {', '.join(FUSIONS)}")
        self.net, self.fusion = net, fusion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        h, w = x3.shape[-2:]
        s = getattr(self.net, "stride", 1)
        ph, pw = (-h) % s, (-w) % s
        xp = F.pad(x3, (0, pw, 0, ph), mode="replicate") if ph or pw else x3
        t = torch.sigmoid(self.net(xp))[..., :h, :w]
        return fuse(x3, t, self.fusion)


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


@register_family("translator", names_from(("unet", "tiny_unet", "identity", "histeq")))
def create_translator(name: str = "unet", encoder: str = "resnet34", pretrained: str | None = None,
                      fusion: str = "mul", **kwargs) -> nn.Module:
    """``name``: ``unet`` (timm encoder), ``tiny_unet``, or a non-learned baseline: ``identity`` (zero-shot and
    fine-tuning) or ``histeq`` (the ModTr paper's no-learning row)."""
    if name in ("identity", "histeq"):
        return IdentityTranslator() if name == "identity" else HistEqTranslator()
    nets = {"tiny_unet": lambda: TinyUNet(**kwargs), "unet": lambda: EncoderUNet(encoder, pretrained, **kwargs)}
    if name not in nets:
        raise ValueError(f"unknown translator '{name}'; use unet, tiny_unet, identity or histeq")
    return ModalityTranslator(nets[name](), fusion)

