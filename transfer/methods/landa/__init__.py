"""LanDA: language-guided multi-source domain adaptation on frozen CLIP embeddings, with its baselines."""

from .module import METHODS, Augmenter, LanDAModule, MissingDescriptionError, templates
from .ot import ot_distance, ot_plan, text_aware_cost

__all__ = ["METHODS", "Augmenter", "LanDAModule", "MissingDescriptionError", "ot_distance", "ot_plan",
           "templates", "text_aware_cost"]
