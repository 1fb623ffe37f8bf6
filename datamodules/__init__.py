"""Shared Lightning data modules and readers of the real dataset formats (never imports ``transfer``).

The names below load on first use, so that a light module (``datamodules.files``, ``datamodules.errors``) can be
imported without Lightning."""

from importlib import import_module

_WHERE = {
    "PairedDetectionDataModule": "detection", "read_coco_json": "detection", "read_voc_xml": "detection",
    "FewShotTargetDataModule": "fewshot",
    "DESCRIPTORS": "domains", "DatasetError": "domains", "DomainDataModule": "domains", "read_list_file": "domains",
    "sample_shots": "domains",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'datamodules' has no attribute '{name}'")
