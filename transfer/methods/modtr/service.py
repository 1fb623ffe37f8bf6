"""Translator artefacts and an in-process detection service: one frozen detector, many modalities.

A translator artefact is one safetensors file: the translator's tensors, and in its metadata the
translator spec (name, encoder, fusion) and the detector (name + weights hash) it was trained against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from transfer.stages import save_tensors
from transfer.safeload import CheckpointFileError, load_checkpoint_file
from transfer.statedict import StateDictMismatchError
from transfer.models import create_model
from transfer.models.detectors import TorchvisionDetector
from transfer.models.translators import IdentityTranslator

FORMAT = "transfer-modtr-translator/1"


def build_translator(spec: dict) -> nn.Module:
    """A translator from its spec (``name`` and the family's arguments), through the model registry."""
    spec = dict(spec)
    return create_model(f"translator/{spec.pop('name', 'unet')}", **spec)


def save_translator(module, path: str | Path) -> Path:
    """Write the translator of a trained :class:`ModTrModule` with its detector's name and hash."""
    meta = {"format": FORMAT, "translator": dict(module.hparams.translator),
            "detector": {"name": module.hparams.detector["name"], "hash": module.detector_hash}}
    return save_tensors(module.translator.state_dict(), path, {"transfer": json.dumps(meta)})


def read_translator_meta(path: str | Path) -> dict:
    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("transfer")
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != FORMAT:
        raise CheckpointFileError(f"{path}: not a ModTr translator artefact")
    return meta


def load_translator_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Translator tensors from an artefact, or from a Lightning checkpoint of a ModTr run."""
    path = Path(path)
    if path.suffix == ".safetensors":
        read_translator_meta(path)
        return load_file(str(path))
    ckpt = load_checkpoint_file(path, "ModTr checkpoint")
    state = ckpt.get("state_dict", ckpt)
    return {k.removeprefix("translator."): v for k, v in state.items() if k.startswith("translator.")}


def load_translator(path: str | Path) -> tuple[nn.Module, dict]:
    meta = read_translator_meta(path)
    translator = build_translator(meta["translator"])
    translator.load_state_dict(load_file(str(path)))
    return translator.eval(), meta


class DetectionService:
    """``detect(images, modality)`` through the matching translator and one shared, never-modified detector."""

    def __init__(self, detector: TorchvisionDetector, detector_name: str):
        self.detector, self.detector_name = detector, detector_name
        self.hash = detector.weights_hash()
        self.translators: dict[str, nn.Module] = {"rgb": IdentityTranslator()}

    def add_translator(self, modality: str, translator: nn.Module | str | Path) -> None:
        if isinstance(translator, (str, Path)):
            translator, meta = load_translator(translator)
            det = meta["detector"]
            if det["hash"] != self.hash:
                raise StateDictMismatchError(
                    f"{translator}: the translator for '{modality}' was trained against {det['name']} (weights hash {det['hash']}); "
                    f"this service runs {self.detector_name} (hash {self.hash})"
                )
        self.translators[modality] = translator.eval()

    def remove_translator(self, modality: str) -> None:
        if modality == "rgb":
            raise ValueError("the rgb (identity) route cannot be removed")
        self.translators.pop(modality)

    def healthy(self) -> bool:
        """True while the detector's weights are exactly those the service started with."""
        return self.detector.weights_hash() == self.hash

    @torch.no_grad()
    def detect(self, images: Sequence[torch.Tensor], modality: str | Sequence[str]) -> list[dict[str, torch.Tensor]]:
        """Images [C,H,W] in [0,1]; one modality for all, or one per image. Images are grouped per modality,
        translated per group, and all go through the detector as one batch; results keep the input order."""
        modalities = [modality] * len(images) if isinstance(modality, str) else list(modality)
        if len(modalities) != len(images):
            raise ValueError(f"{len(images)} images but {len(modalities)} modalities")
        unknown = sorted(set(modalities) - set(self.translators))
        if unknown:
            raise KeyError(f"no translator for modality {unknown[0]!r}; known: {', '.join(self.translators)}")
        translated: list[torch.Tensor | None] = [None] * len(images)
        for mod in dict.fromkeys(modalities):
            idx = [i for i, m in enumerate(modalities) if m == mod]
            same = len({tuple(images[i].shape) for i in idx}) == 1
            if same:  # else sizes differ inside the group: translate image by image
                out = self.translators[mod](torch.stack([images[i] for i in idx]))
                for j, i in enumerate(idx):
                    translated[i] = out[j]
            else:
                for i in idx:
                    translated[i] = self.translators[mod](images[i][None])[0]
        return self.detector.predict(translated)
