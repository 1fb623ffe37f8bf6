"""MoE-LoRA for audio deepfake detection: LoRA experts with routers in wav2vec2 attention; full FT,
head-only and single-LoRA baselines in the same module."""

from .module import DeepfakeDetectionModule

__all__ = ["DeepfakeDetectionModule"]
