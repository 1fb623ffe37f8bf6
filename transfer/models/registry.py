"""One face for every model the methods build (timm's pattern): ``register_model``, ``create_model``,
``list_models``, and one report of how a state dict fits a model.

Names are ``family/name``: ``detector/fcos``, ``translator/unet``, ``segmentation/mv``, ``wav2vec2/xlsr_300m``,
``classifier/resnet50`` (any timm or torchvision classifier name). Each family's factory keeps its own
arguments (``weights``, ``num_classes``, ...); ``create_model`` passes them through.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from torch import nn

from transfer.statedict import StateDictFit, state_dict_fit  # noqa: F401 (part of the registry's face)

_MODELS: dict[str, Callable[..., nn.Module]] = {}
#: families whose names are open-ended (delegated to another library's own registry)
_OPEN: dict[str, tuple[Callable[..., nn.Module], Callable[[str], list[str]]]] = {}


def register_model(qualified: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``@register_model("detector/tiny_fcos")`` over a factory taking the family's arguments."""
    family, _, name = qualified.partition("/")
    if not family or not name:
        raise ValueError(f"model names are 'family/name', got '{qualified}'")

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if qualified in _MODELS:
            raise ValueError(f"model '{qualified}' is registered twice")
        _MODELS[qualified] = factory
        return factory

    return add


def register_family(family: str, factory: Callable[..., nn.Module], names: Callable[[str], list[str]]) -> None:
    """A family served by another registry (timm / torchvision classifiers): ``factory(name, **kw)``, ``names(pattern)``."""
    _OPEN[family] = (factory, names)


def _families() -> list[str]:
    return sorted({q.split("/")[0] for q in _MODELS} | set(_OPEN))


def create_model(qualified: str, **kwargs: Any) -> nn.Module:
    """Build ``family/name`` with the family's arguments, e.g. ``create_model("detector/fcos", weights=...)``."""
    _load_families()
    if qualified in _MODELS:
        return _MODELS[qualified](**kwargs)
    family, _, name = qualified.partition("/")
    if family in _OPEN and name:
        return _OPEN[family][0](name, **kwargs)
    known = [q for q in _MODELS if q.startswith(f"{family}/")]
    if known:
        raise ValueError(f"unknown {family} '{name}'; known: {', '.join(q.split('/', 1)[1] for q in known)}")
    raise ValueError(f"unknown model '{qualified}': names are family/name with family one of {', '.join(_families())}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered ``family/name`` matching a shell pattern (``detector/*``, ``*/unet``); open families list the
    names their library knows (``classifier/resnet5*``)."""
    _load_families()
    found = [q for q in _MODELS if fnmatch.fnmatch(q, pattern)]
    for family, (_, names) in _OPEN.items():
        fam_pattern, _, name_pattern = pattern.partition("/")
        if fnmatch.fnmatch(family, fam_pattern or "*") and (name_pattern or pattern in ("*", family)):
            found += [f"{family}/{n}" for n in names(name_pattern or "*")]
    return sorted(found)


def _load_families() -> None:
    """Importing the model modules registers their factories (lazily: some pull in large libraries)."""
    from transfer.models import backbones, detectors, translators, unets, wav2vec2  # noqa: F401


