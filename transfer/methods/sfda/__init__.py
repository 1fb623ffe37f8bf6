"""Few-shot source-free domain adaptation (Lee et al., "Few-shot Fine-tuning is All You Need for Source-free
Domain Adaptation") and its SFDA baselines. This first part holds the building blocks: the SHOT-style
network, SAM, and the SHOT / NRC / AaD objectives with SND model selection."""

from .losses import aad_loss, information_maximization, nrc_loss, shot_pseudo_labels, snd
from .network import SHOTNet
from .sam import SAM

__all__ = ["SAM", "SHOTNet", "aad_loss", "information_maximization", "nrc_loss", "shot_pseudo_labels", "snd"]
