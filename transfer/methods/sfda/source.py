"""Stage 1 of source-free DA: the SHOT source model, trained once and exported; source data is not used again.

The export is a safetensors file of the :class:`SHOTNet` weights with the architecture and the class names in its
metadata, written (atomically) whenever the source-validation accuracy improves, as SHOT keeps its best model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open

from transfer.checkpoints import check_compatible
from transfer.safeload import CheckpointFileError
from transfer.statedict import StateDictMismatchError
from transfer.optim import make_optimizer
from transfer.stages import save_tensors
from transfer.methods.source_only import SourceOnlyClassifier

from .network import SHOTNet


class MissingSourceModelError(FileNotFoundError):
    pass


def save_source_model(net: SHOTNet, path: str | Path, backbone: str, bottleneck: int, classes) -> None:
    meta = {"backbone": backbone, "bottleneck": str(bottleneck), "classes": json.dumps(list(classes))}
    save_tensors(net.state_dict(), path, meta)


def source_model_info(path: str | Path) -> dict:
    """Architecture and class names of an exported source model (reads the header only)."""
    path = Path(path)
    if not path.is_file():
        raise MissingSourceModelError(
            f"source model {path} does not exist: train it first (python -m transfer.train "
            f"experiment=sfda_source_<dataset>_<domain>), or point model.source_model at its source_model.safetensors")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CheckpointFileError(f"{path}: not a readable safetensors source model ({e})") from None
    if not {"backbone", "bottleneck", "classes"} <= set(meta):
        raise CheckpointFileError(f"{path}: no source-model metadata (backbone, bottleneck, classes); "
                                          f"export it with transfer.methods.sfda.save_source_model")
    return {"backbone": meta["backbone"], "bottleneck": int(meta["bottleneck"]), "classes": json.loads(meta["classes"])}


def load_source_model(net: SHOTNet, path: str | Path, backbone: str, bottleneck: int) -> None:
    from safetensors.torch import load_file

    info = source_model_info(path)
    if (info["backbone"], info["bottleneck"]) != (backbone, bottleneck):
        raise StateDictMismatchError(
            f"{path}: source model is {info['backbone']} with a {info['bottleneck']}-d bottleneck, this run builds "
            f"{backbone} with {bottleneck}; set model.backbone / model.bottleneck to match")
    state = load_file(str(path))
    check_compatible(net.state_dict(), state, what=str(path))
    net.load_state_dict(state)


class SHOTSourceModule(SourceOnlyClassifier):
    """SHOT's source recipe: SHOTNet, label smoothing 0.1, SGD (Nesterov, wd 1e-3) with the backbone at 0.1x the
    lr and lr x (1 + 10 p)^-0.75 (``optimizer=adamw`` for from-scratch toys). Logs val/acc on the source split and test/<target>/acc (source-only)."""

    architecture_keys = ("backbone", "bottleneck", "num_classes")

    def __init__(self, backbone: str = "resnet50", pretrained: bool | str | None = False, num_classes: int | None = None,
                 bottleneck: int = 256, lr: float = 1e-2, backbone_lr_mult: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 1e-3, label_smoothing: float = 0.1, optimizer: str | dict = "sgd",
                 export_path: str | None = None):
        super().__init__(backbone=backbone, pretrained=pretrained, num_classes=num_classes, lr=lr,
                         weight_decay=weight_decay, label_smoothing=label_smoothing, scheduler="none")
        self.save_hyperparameters()
        self._best = -1.0

    def make_net(self, num_classes: int) -> SHOTNet:
        hp = self.hparams
        return SHOTNet(hp.backbone, num_classes, hp.bottleneck, hp.pretrained)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        acc = self.trainer.callback_metrics.get("val/acc")
        if self.hparams.export_path and acc is not None and not self.trainer.sanity_checking \
                and self.trainer.is_global_zero and float(acc) > self._best:
            self._best = float(acc)
            save_source_model(self.net, self.hparams.export_path, self.hparams.backbone, self.hparams.bottleneck,
                              self.trainer.datamodule.classes)

    def configure_optimizers(self):
        hp = self.hparams
        groups = [{"params": self.net.netF.parameters(), "lr": hp.lr * hp.backbone_lr_mult},
                  {"params": [*self.net.netB.parameters(), *self.net.netC.parameters()], "lr": hp.lr}]
        if isinstance(hp.optimizer, Mapping):  # model.optimizer: {name: ..., ...} over the same groups
            opt = make_optimizer(groups, hp.optimizer, None)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, momentum=hp.momentum, nesterov=True, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":  # for backbones trained from scratch (toys), where SGD at these lrs crawls
            opt = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"optimizer must be sgd or adamw, got '{hp.optimizer}'")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": shot_schedule(opt, self.trainer.estimated_stepping_batches),
                                                    "interval": "step"}}


def shot_schedule(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """SHOT's lr decay: lr x (1 + 10 p)^-0.75 with p the fraction of training done."""
    total = max(1, int(total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (1 + 10 * min(step, total) / total) ** -0.75)
