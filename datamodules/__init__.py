"""Shared Lightning data modules and readers of the real dataset formats (never imports ``transfer``)."""

from .detection import PairedDetectionDataModule, read_coco_json, read_voc_xml
from .fewshot import FewShotTargetDataModule
from .domains import DESCRIPTORS, DatasetError, DomainDataModule, read_list_file, sample_shots

__all__ = ["DESCRIPTORS", "DatasetError", "DomainDataModule", "FewShotTargetDataModule", "PairedDetectionDataModule", "read_coco_json",
           "read_list_file", "read_voc_xml", "sample_shots"]
