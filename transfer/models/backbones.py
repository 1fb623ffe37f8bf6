"""Image classifiers from timm or torchvision by name, with pretrained weights resolved locally."""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

from transfer.weights import WeightsError, load_state_dict, resolve


def _build(name: str, num_classes: int, **kwargs) -> nn.Module:
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    tv_name = name.removeprefix("tv:").removeprefix("torchvision:")
    if tv_name in torchvision.models.list_models():
        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
    close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
    raise ValueError(f"unknown backbone '{name}': not a timm or torchvision model. Close timm names: {close}")


def load_pretrained(model: nn.Module, weights: str, *, skip_mismatched_head: bool = True) -> list[str]:
    """Load a registered name or a file into ``model``; classifier tensors of another size are skipped.

    Returns the keys left at their initial values. Any other mismatch is an error naming the tensors.
    """
    path = resolve(weights)
    state = load_state_dict(path)
    own = model.state_dict()
    skipped, bad = [], []
    for key, value in list(state.items()):
        if key not in own:
            continue
        if own[key].shape != value.shape:
            if skip_mismatched_head:
                skipped.append(key)
                state.pop(key)
            else:
                bad.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if bad or len(missing) > len(skipped) + 2 or unexpected:
        raise WeightsError(
            f"{path} does not fit {type(model).__name__}: {len(missing)} missing, {len(unexpected)} unexpected "
            f"tensors (e.g. missing {missing[:3]}, unexpected {unexpected[:3]}) {bad[:3]}"
        )
    model.load_state_dict(state, strict=False)
    return missing


def create_classifier(name: str, num_classes: int, pretrained: bool | str | None = None, **kwargs) -> nn.Module:
    """``name`` is a timm or torchvision model name; ``pretrained`` is False, True (registry entry
    named like the model) or a registered weights name / file path."""
    model = _build(name, num_classes, **kwargs)
    if pretrained:
        load_pretrained(model, name if pretrained is True else str(pretrained))
    return model


@torch.no_grad()
def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
