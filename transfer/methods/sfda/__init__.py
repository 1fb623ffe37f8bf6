"""Few-shot source-free domain adaptation (Lee et al. 2023, "Few-shot Fine-tuning is All You Need for
Source-free Domain Adaptation"): the SHOT source stage, few-shot FT / LP / LP-FT with SAM, and the SHOT / NRC /
AaD baselines with SND model selection."""

from .losses import aad_loss, information_maximization, nrc_loss, shot_pseudo_labels, snd
from .module import STRATEGIES, FewShotSFDAModule, TargetClassesError
from .network import SHOTNet
from .sam import SAM
from .source import MissingSourceModelError, SHOTSourceModule, load_source_model, save_source_model, source_model_info

__all__ = ["SAM", "STRATEGIES", "FewShotSFDAModule", "MissingSourceModelError", "SHOTNet", "SHOTSourceModule",
           "TargetClassesError", "aad_loss", "information_maximization", "load_source_model", "nrc_loss",
           "save_source_model", "shot_pseudo_labels", "snd", "source_model_info"]
