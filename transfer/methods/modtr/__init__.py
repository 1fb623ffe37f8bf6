"""ModTr (Medeiros et al., ECCV 2024): IR-to-RGB modality translation in front of a frozen detector."""

from .baselines import HistEqTranslator, IdentityTranslator
from .module import ModTrModule, build_translator
from .service import DetectionService, load_translator, save_translator

__all__ = ["DetectionService", "HistEqTranslator", "IdentityTranslator", "ModTrModule", "build_translator",
           "load_translator", "save_translator"]
