"""Shared Lightning data modules and readers of the real dataset formats (never imports ``transfer``)."""

from .domains import DESCRIPTORS, DatasetError, DomainDataModule, read_list_file, sample_shots

__all__ = ["DESCRIPTORS", "DatasetError", "DomainDataModule", "read_list_file", "sample_shots"]
