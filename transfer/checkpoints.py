"""Checkpoint compatibility: a checkpoint from another model fails with a short, readable error."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from transfer.adapters import adapter_state_dict
from transfer.statedict import StateDictMismatchError, state_dict_fit
from datamodules.files import atomic_path
from transfer.safeload import CheckpointFileError, load_checkpoint_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file in the destination folder, synced and renamed into place:
    a full disk or a kill leaves the previous checkpoint intact, never a truncated file under its final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        ckpt = load_checkpoint_file(path, "Lightning checkpoint")
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise CheckpointFileError(f"{path}: not a Lightning checkpoint (no state_dict)")
        return ckpt

    def remove_checkpoint(self, path) -> None:
        if os.path.exists(path):
            os.unlink(path)


def check_compatible(own: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor],
                     what: str = "checkpoint", hint: str = "") -> None:
    fit = state_dict_fit(own, theirs)
    missing, unexpected = fit.missing, fit.unexpected
    shapes = [f"{k} {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}" for k in fit.mis_shaped]
    if not fit.ok:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} tensors differ in shape (e.g. {shapes[0]})")
        if missing:
            parts.append(f"{len(missing)} expected tensors are absent (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors are unknown to this model (e.g. {unexpected[0]})")
        raise StateDictMismatchError(
            f"{what} was saved from a different model: " + "; ".join(parts) + (f". {hint}" if hint else ""), fit)


class CompatibleCheckpointMixin:
    """LightningModule mixin: compare a checkpoint with the model before Lightning loads it."""

    #: hyperparameters that name the architecture, quoted in the error when they differ
    architecture_keys: tuple[str, ...] = ()

    #: save only adapters and other trainable tensors in Lightning checkpoints (the frozen base is rebuilt
    #: from its pretrained weights when the checkpoint is loaded)
    adapter_only_checkpoints: bool = False

    def partial_checkpoint_keys(self) -> set[str] | None:
        """Keys a checkpoint keeps, or None for the whole state dict (methods may override)."""
        return set(adapter_state_dict(self)) if self.adapter_only_checkpoints else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.partial_checkpoint_keys()
        if keep is not None:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
            checkpoint["partial_state_dict"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        theirs_hp = checkpoint.get("hyper_parameters", {}) or {}
        diffs = [f"{k}={theirs_hp.get(k)!r} (this run: {self.hparams.get(k)!r})"
                 for k in self.architecture_keys if theirs_hp.get(k) != self.hparams.get(k)]
        hint = ("It was trained with " + ", ".join(diffs)) if diffs else ""
        own = self.state_dict()
        partial = bool(checkpoint.get("partial_state_dict"))
        if partial:
            own = {k: own[k] for k in (self.partial_checkpoint_keys() or own)}
        check_compatible(own, checkpoint.get("state_dict", {}), hint=hint)
        self._partial_load = partial

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if getattr(self, "_partial_load", False):  # checked above: every kept tensor is present
            strict, self._partial_load = False, False
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
