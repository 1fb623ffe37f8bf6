"""ModTr: a translator in front of a frozen detector, trained only through the detector's loss.

The same module runs the baselines: ``translator: {name: identity}`` + ``train_detector: full|head`` is
detector fine-tuning, ``{name: histeq}`` with nothing trained is histogram equalisation, a trained
translator (``translator_weights``) + ``train_detector: full`` is "ModTr + FT", and ``input_modality:
rgb`` with ``train_detector: full`` pre-trains a detector on RGB (the toy's stand-in for COCO).

Every evaluation scores three pipelines: ``ir`` (this method on IR), ``ir_zero_shot`` (the untouched
detector on raw IR, when the detector is frozen) and ``rgb`` (the detector on RGB: knowledge kept or lost).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from torchmetrics.detection import MeanAveragePrecision

from transfer.methods.base import MethodModule
from transfer.statedict import StateDictMismatchError
from transfer.optim import configured, make_optimizer, make_scheduler
from transfer.stages import cached_stage, stage_file, stage_trainer
from transfer.models import create_model
from transfer.models.detectors import (CHECKPOINTING, TorchvisionDetector, checkpoint_detector,
                                       load_detector_weights, recompute_blocks, recompute_in_backward)

from .service import build_translator, load_translator_state

DEFAULT_LOSS_WEIGHT = 1.0
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # one INFO table per compute() otherwise


class ModTrModule(MethodModule):
    has_stages = True  # prepare() builds its cached stages from the data
    architecture_keys = ("detector", "translator")
    pooled_val_target = None  # val/map_50 (the monitor) repeats val/<modality>/map_50

    def __init__(
        self,
        detector: dict[str, Any],
        translator: dict[str, Any],
        train_detector: str = "none",
        train_translator: bool = True,
        input_modality: str = "ir",
        translator_weights: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup: float = 0.0,
        loss_weights: dict[str, float] | None = None,
        keep_labels: list[int] | None = None,
        pretrain: dict[str, Any] | None = None,
        activation_checkpointing: str = "none",
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if input_modality not in ("ir", "rgb"):
            raise ValueError(f"input_modality must be ir or rgb, got '{input_modality}'")
        if activation_checkpointing not in CHECKPOINTING:
            raise ValueError(f"activation_checkpointing must be one of {', '.join(CHECKPOINTING)}, "
                             f"got '{activation_checkpointing}'")
        self.detector = TorchvisionDetector(
            create_model(f"detector/{detector['name']}", **{k: v for k, v in detector.items() if k != 'name'}),
            trainable=train_detector, name=detector["name"])
        self.translator = build_translator(translator)
        if translator_weights:
            self.translator.load_state_dict(load_translator_state(translator_weights))
        for p in self.translator.parameters():
            p.requires_grad_(train_translator)
        self.detector_hash = self.detector.weights_hash()
        self._checkpoint_activations(activation_checkpointing)
        self.val_maps = self._maps()
        self.test_maps = self._maps()

    def _checkpoint_activations(self, which: str) -> None:
        """Recompute instead of store: the frozen detector's backbone + FPN and dense head (what dominates a ModTr
        step's memory at FLIR resolution), and/or the translator: its encoder block by block and each decoder block
        (the tiny UNet has neither and is left as it is)."""
        if which in ("detector", "both"):
            checkpoint_detector(self.detector.detector)
        if which in ("translator", "both"):
            inner = getattr(self.translator, "net", self.translator)
            encoder = getattr(inner, "encoder", None)
            if encoder is not None:
                recompute_blocks(encoder)
                for block in getattr(inner, "blocks", []):
                    recompute_in_backward(block)

    def _maps(self) -> torch.nn.ModuleDict:
        names = [self.hparams.input_modality]
        if self.hparams.input_modality == "ir":
            names += ["rgb"] + (["ir_zero_shot"] if self._zero_shot_differs() else [])
        return torch.nn.ModuleDict({n: MeanAveragePrecision(box_format="xyxy", backend="faster_coco_eval") for n in names})

    def _zero_shot_differs(self) -> bool:
        return self.hparams.train_detector == "none" and self.hparams.translator.get("name") != "identity"

    # -- stages before fitting
    def prepare(self, datamodule: L.LightningDataModule, run: L.Trainer | None = None) -> None:
        """Toy only: pre-train the detector on RGB once (``pretrain``), cached by its settings."""
        spec = self.hparams.pretrain
        if not spec:
            return
        settings = {"detector": self.hparams.detector, "pretrain": spec, "data": str(getattr(datamodule, "root", ""))}
        path = stage_file(spec["cache_dir"], f"{self.hparams.detector['name']}-rgb", settings,
                          code=(__name__, "transfer.models.detectors"), run=run)
        cached_stage(path, lambda: self._pretrain_detector(datamodule, spec, run))
        from safetensors.torch import load_file

        load_detector_weights(self.detector.detector, load_file(str(path)), str(path))
        self.detector_hash = self.detector.weights_hash()

    def _pretrain_detector(self, datamodule, spec: dict, run: L.Trainer | None) -> dict[str, torch.Tensor]:
        L.seed_everything(spec.get("seed", 0), verbose=False)
        stage = ModTrModule(detector=self.hparams.detector, translator={"name": "identity"}, train_detector="full",
                            input_modality="rgb", lr=spec["lr"], weight_decay=spec.get("weight_decay", 1e-4),
                            warmup=spec.get("warmup", 0.1))
        trainer = stage_trainer(run, max_steps=spec["steps"], gradient_clip_val=spec.get("clip", 10.0), limit_val_batches=0,
                                num_sanity_val_steps=0)
        datamodule.setup("fit")
        trainer.fit(stage, train_dataloaders=datamodule.train_dataloader())
        return stage.detector.detector.state_dict()

    # -- steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.translator(x)

    def training_step(self, batch, batch_idx):
        x_hat = self.translator(batch[self.hparams.input_modality])
        losses = self.detector.losses(x_hat, batch["target"])
        weights = self.hparams.loss_weights or {}
        loss = sum(weights.get(k, DEFAULT_LOSS_WEIGHT) * v for k, v in losses.items())
        bs = len(batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in losses.items():
            self.log(f"train/{k}", v, batch_size=bs)
        return loss

    def _predict(self, images: torch.Tensor) -> list[dict]:
        preds = self.detector.predict(images)
        keep = self.hparams.keep_labels
        if keep:
            allowed = torch.tensor(keep, device=images.device)
            preds = [{k: v[torch.isin(p["labels"], allowed)] for k, v in p.items()} for p in preds]
        return preds

    def _update(self, maps: torch.nn.ModuleDict, batch) -> None:
        targets = batch["target"]
        with torch.no_grad():
            maps[self.hparams.input_modality].update(self._predict(self.translator(batch[self.hparams.input_modality])), targets)
            if "rgb" in maps and "rgb" in batch:
                maps["rgb"].update(self._predict(batch["rgb"]), targets)
            if "ir_zero_shot" in maps:
                maps["ir_zero_shot"].update(self._predict(batch["ir"].expand(-1, 3, -1, -1)), targets)

    def _log_maps(self, maps: torch.nn.ModuleDict, split: str) -> None:
        for name, metric in maps.items():
            if not metric.update_called:
                continue
            values = metric.compute()
            metric.reset()
            for key in ("map", "map_50", "map_75"):
                self.log(f"{split}/{name}/{key}", values[key], sync_dist=False)
                if name == self.hparams.input_modality and split == "val":
                    self.log(f"val/{key}", values[key], prog_bar=key == "map_50")

    def validation_step(self, batch, batch_idx):
        self._update(self.val_maps, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_maps(self.val_maps, "val")

    def test_step(self, batch, batch_idx):
        self._update(self.test_maps, batch)

    def on_test_epoch_end(self) -> None:
        self._log_maps(self.test_maps, "test")
        if self.hparams.input_modality == "ir":
            unchanged = float(self.detector.weights_hash() == self.detector_hash)
            self.log("test/rgb/detector_unchanged", unchanged)

    # -- optimisation
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: set train_translator or train_detector (or run with train=false)")
        hp = self.hparams
        opt = make_optimizer(params, hp.optimizer,
                             lambda g: torch.optim.AdamW(g, lr=hp.lr, weight_decay=hp.weight_decay))
        total = max(1, self.trainer.estimated_stepping_batches)
        warm = int(hp.warmup * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        def warmup_cosine(o):
            return {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, factor), "interval": "step"}

        return configured(opt, make_scheduler(opt, hp.scheduler, warmup_cosine))

    # -- checkpoints: the translator only (plus the detector it belongs to) when the detector is frozen
    def partial_checkpoint_keys(self) -> set[str] | None:
        if self.hparams.train_detector != "none":
            return None
        return {k for k in self.state_dict() if k.startswith("translator.")}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["detector"] = {"name": self.hparams.detector["name"], "hash": self.detector_hash}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("detector")
        if saved and checkpoint.get("partial_state_dict") and saved["hash"] != self.detector_hash:
            raise StateDictMismatchError(
                f"this translator was trained against detector {saved['name']} with weights hash {saved['hash']}, "
                f"but this run's detector {self.hparams.detector['name']} has hash {self.detector_hash}"
            )
        super().on_load_checkpoint(checkpoint)
