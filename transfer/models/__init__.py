"""Every model the methods build, through one registry: ``create_model("family/name", **kw)``, ``list_models``."""

from .registry import create_model, list_models

__all__ = ["create_model", "list_models"]
