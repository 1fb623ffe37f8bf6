"""Hematoma segmentation transfer (SAH LoRA-Unet study): pre-trained 3D Unet -> fine-tuning or conv adapters,
k-fold cross-validation with a clinical report."""

from .module import STRATEGIES, SegmentationModule

__all__ = ["STRATEGIES", "SegmentationModule"]
