"""Image classifiers from timm or torchvision by name, with pretrained weights resolved locally."""

from __future__ import annotations

import fnmatch
import logging

import timm
import torch
import torchvision
from torch import nn

from transfer.models.registry import register_family
from transfer.weights import resolve
from transfer.safeload import load_state_dict
from transfer.statedict import StateDictMismatchError, state_dict_fit

log = logging.getLogger("transfer")


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
    own, head = model.state_dict(), _head_keys(model)
    fit = state_dict_fit(own, state, ignore=lambda k: k.endswith("num_batches_tracked"))
    skipped = [k for k in fit.mis_shaped if skip_mismatched_head and k in head]  # a head for another class count
    prefixes = _head_prefixes(model)
    dropped = [k for k in fit.unexpected if k.startswith(prefixes)]  # the file's head, on a headless model
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in fit.mis_shaped if k not in skipped]
    unexpected = [k for k in fit.unexpected if k not in dropped]
    not_head = [k for k in fit.missing if k not in head]
    if bad or not_head or unexpected:
        raise StateDictMismatchError(
            f"{path} does not fit {type(model).__name__}: {len(not_head)} missing tensors outside the classifier head "
            f"{not_head[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, {len(bad)} of another shape {bad[:3]}", fit)
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped and k not in dropped}, strict=False)
    missing = [k for k in own if k in fit.missing or k in skipped]
    if missing:
        log.warning("%s: classifier head %s left at its initial values (not in the file, or for another number of classes)", path, missing)
    if dropped:
        log.info("%s: the file's classifier head %s is not used (the model has no head of that shape)", path, dropped)
    return missing


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = [named] if isinstance(named, str) else list(named or [])
    return tuple(f"{n}." for n in names or ["fc", "classifier", "head"])


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (timm ``get_classifier``, or torchvision's ``fc``/``classifier``)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        head = getattr(model, "fc", None) or getattr(model, "classifier", None) or getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        return set()
    ids = {id(m) for m in head.modules()}
    return {f"{n}.{k}" if n else k for n, m in model.named_modules() if id(m) in ids
            for k, _ in m.named_parameters(recurse=False)} | \
        {f"{n}.{k}" for n, m in model.named_modules() if id(m) in ids for k, _ in m.named_buffers(recurse=False)}


def _classifier_names(pattern: str) -> list[str]:
    """timm names (with or without a pretrained tag) and torchvision names as ``tv:<name>``."""
    tv = [f"tv:{n}" for n in torchvision.models.list_models() if fnmatch.fnmatch(f"tv:{n}", pattern)]
    return sorted({*timm.list_models(pattern), *timm.list_models(pattern, pretrained=True), *tv})


@register_family("classifier", _classifier_names, open_ended=True)
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
