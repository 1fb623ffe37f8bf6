"""One way in for every model the methods build (timm's pattern): ``create_model("family/name", **kw)``,
``list_models(pattern)``, and one report of how a state dict fits a model.

Names are ``family/name``: ``detector/fcos``, ``translator/unet``, ``segmentation/mv``, ``wav2vec2/xlsr_300m``,
``classifier/resnet50`` (any timm or torchvision classifier name). A family registers its factory where it is
defined, with ``@register_family(family, names)`` (``names(pattern)``: the names it knows); the factory takes
the name and the family's own arguments (``weights``, ``num_classes``, ...). This module imports no family: each
is loaded by its module name the first time it is asked for (some pull in large libraries).
"""

from __future__ import annotations

import fnmatch
from importlib import import_module
from typing import Any, Callable

from torch import nn

from transfer.statedict import StateDictFit, state_dict_fit  # noqa: F401 (part of the registry's face)

#: family -> the module that registers it
FAMILY_MODULES = {
    "classifier": "transfer.models.backbones",
    "detector": "transfer.models.detectors",
    "segmentation": "transfer.models.unets",
    "translator": "transfer.models.translators",
    "wav2vec2": "transfer.models.wav2vec2",
}
_FAMILIES: dict[str, tuple[Callable[..., nn.Module], Callable[[str], list[str]], bool]] = {}


def register_family(family: str, names: Callable[[str], list[str]], open_ended: bool = False):
    """Decorator over a family's factory ``factory(name, **kw)``; ``names(pattern)`` lists the names it builds.
    ``open_ended``: the factory also takes names the list does not show (another library's aliases) and names an
    unknown one itself."""
    if family not in FAMILY_MODULES:
        raise ValueError(f"family '{family}' is not listed in transfer.models.registry.FAMILY_MODULES")

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FAMILIES[family] = (factory, names, open_ended)
        return factory

    return add


def names_from(table) -> Callable[[str], list[str]]:
    """``names`` for a family whose builders are the keys of ``table``."""
    return lambda pattern: sorted(n for n in table if fnmatch.fnmatch(n, pattern))


def _family(family: str):
    if family not in FAMILY_MODULES:
        raise ValueError(f"unknown model family '{family}': names are family/name with family one of "
                         f"{', '.join(sorted(FAMILY_MODULES))}")
    if family not in _FAMILIES:
        import_module(FAMILY_MODULES[family])
    return _FAMILIES[family]


def create_model(qualified: str, **kwargs: Any) -> nn.Module:
    """Build ``family/name`` with the family's arguments, e.g. ``create_model("detector/fcos", weights=...)``."""
    family, _, name = qualified.partition("/")
    factory, names, open_ended = _family(family)
    if not name or not (open_ended or names(name)):
        known = names("*")
        shown = ", ".join(known[:12]) + (f", ... ({len(known)})" if len(known) > 12 else "")
        raise ValueError(f"unknown {family} '{name}'; known: {shown}")
    return factory(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """``family/name`` matching a shell pattern (``detector/*``, ``*/unet``, ``classifier/resnet5*``)."""
    fam_pattern, sep, name_pattern = pattern.partition("/")
    found = []
    for family in sorted(FAMILY_MODULES):
        if fnmatch.fnmatch(family, fam_pattern if sep else "*"):
            found += [f"{family}/{n}" for n in _family(family)[1](name_pattern if sep else "*")
                      if sep or fnmatch.fnmatch(f"{family}/{n}", pattern)]
    return sorted(found)
