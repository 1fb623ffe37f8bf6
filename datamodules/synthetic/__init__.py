"""Synthetic datasets written to disk in real formats, so toys and tests go through the real readers."""

from .domains import SyntheticDomainDataModule, generate_domains
from .rgbir import SyntheticRGBIRDataModule, generate_rgbir

__all__ = ["SyntheticDomainDataModule", "SyntheticRGBIRDataModule", "generate_domains", "generate_rgbir"]
