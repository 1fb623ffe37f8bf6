"""Synthetic datasets written to disk in real formats, so toys and tests go through the real readers."""

from .domains import SyntheticDomainDataModule, generate_domains

__all__ = ["SyntheticDomainDataModule", "generate_domains"]
