"""Source-only training / fine-tuning: the reference every adaptation method must beat."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from transfer.methods.base import MethodModule
from transfer.models import create_model
from transfer.optim import configured, make_optimizer, make_scheduler


class SourceOnlyClassifier(MethodModule):
    """A timm/torchvision classifier trained on the pooled source domains.

    Logs ``val/acc`` on the source validation split (``val/target_acc`` on targets when the oracle
    protocol asks for it) and ``test/<target>/acc`` per target domain.
    """

    architecture_keys = ("backbone", "num_classes")

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool | str | None = False,
        num_classes: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.0,
        scheduler: str | dict = "cosine",
        optimizer: dict | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module | None = None
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        self.net = self.make_net(num_classes)
        self.hparams.num_classes = num_classes
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_target_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = nn.ModuleDict()

    def make_net(self, num_classes: int) -> nn.Module:
        hp = self.hparams
        return create_model(f"classifier/{hp.backbone}", num_classes=num_classes, pretrained=hp.pretrained,
                            **(hp.backbone_kwargs or {}))

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.net is None:
            if dm is None:
                raise ValueError("num_classes is unknown: pass it or train with a datamodule")
            self._build(dm.num_classes)
        elif dm is not None and dm.num_classes != self.hparams.num_classes:
            raise ValueError(f"model has {self.hparams.num_classes} classes, data has {dm.num_classes}")
        if dm is not None and hasattr(dm, "test_names"):
            for name in dm.test_names:
                if name not in self.test_acc:
                    self.test_acc[name] = MulticlassAccuracy(self.hparams.num_classes, average="micro")
            self.test_names = list(dm.test_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y, _ = batch
        logits = self(x)
        if dataloader_idx == 0:
            self.val_acc.update(logits, y)
            self.log("val/loss", F.cross_entropy(logits, y), batch_size=len(y), add_dataloader_idx=False)
            self.log("val/acc", self.val_acc, prog_bar=True, add_dataloader_idx=False)
        else:  # oracle protocol only: pooled over all target loaders, logged at epoch end
            self.val_target_acc.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        if self.val_target_acc.update_called:
            self.log("val/target_acc", self.val_target_acc.compute())
            self.val_target_acc.reset()

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y, _ = batch
        name = self.test_names[dataloader_idx]
        metric = self.test_acc[name]
        metric.update(self(x), y)
        self.log(f"test/{name}/acc", metric, add_dataloader_idx=False)

    def configure_optimizers(self):
        hp = self.hparams
        opt = make_optimizer(self.parameters(), hp.optimizer,
                             lambda g: torch.optim.AdamW(g, lr=hp.lr, weight_decay=hp.weight_decay))
        if isinstance(hp.scheduler, Mapping):  # model.scheduler: {name: ..., ...}
            return configured(opt, make_scheduler(opt, hp.scheduler))
        if hp.scheduler == "none":
            return opt
        if hp.scheduler != "cosine":
            raise ValueError(f"scheduler must be cosine, none or {{name: ..., ...}}, got '{hp.scheduler}'")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
