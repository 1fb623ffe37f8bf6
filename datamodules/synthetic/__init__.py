"""Synthetic datasets written to disk in real formats, so toys and tests go through the real readers."""

from ._cache import cache_key
from .domains import SyntheticDomainDataModule, generate_domains
from .hematoma import SyntheticHematomaDataModule, generate_hematoma
from .rgbir import SyntheticRGBIRDataModule, generate_rgbir
from .spoof import SyntheticSpoofDataModule, generate_spoof

__all__ = ["SyntheticDomainDataModule", "cache_key", "SyntheticHematomaDataModule", "SyntheticRGBIRDataModule", "SyntheticSpoofDataModule", "generate_domains",
           "generate_hematoma", "generate_rgbir", "generate_spoof"]
