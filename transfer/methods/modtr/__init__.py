"""ModTr (Medeiros et al., ECCV 2024): IR-to-RGB modality translation in front of a frozen detector."""

from transfer.models.translators import HistEqTranslator, IdentityTranslator

from .module import ModTrModule
from .service import DetectionService, build_translator, load_translator, save_translator

__all__ = ["DetectionService", "HistEqTranslator", "IdentityTranslator", "ModTrModule", "build_translator",
           "load_translator", "save_translator"]
