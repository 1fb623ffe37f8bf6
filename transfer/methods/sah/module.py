"""One LightningModule for every transfer strategy of the SAH study.

``strategy``: ``none`` (the pre-trained model as is), ``full`` (all weights), ``module`` (the weights of one
module group), or an adapter kind (``lora_c``, ``convlora``, ``cp_lora``, ``dora_c``, ``convdora``, ``cp_dora``)
on a group with rank ``rank``. ``norm_policy`` for the non-full strategies: ``frozen`` (BatchNorm statistics
fixed), ``adabn`` (statistics re-estimated on the target, affine fixed) or ``affine`` (affine trained).
Testing writes ``per_case.csv`` (one row per case, duplicates from distributed padding removed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from monai.data.utils import affine_to_spacing
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from torch.nn.modules.batchnorm import _BatchNorm

from transfer.methods.base import MethodModule
from transfer.adapters import AdapterConfig, PAPER_NAMES, adapter_state_dict, inject, load_base_weights
from transfer.metrics.distributed import gather
from transfer.metrics.clinical import DEFAULT_BINS, case_result, cases_to_csv, summarize
from transfer.models import create_model
from transfer.models.unets import forward_any_size
from transfer.optim import configured, make_optimizer, make_scheduler
from datamodules.files import atomic_write_text
from transfer.stages import cached_stage, stage_file, stage_trainer
from transfer.safeload import load_state_dict

ADAPTER_KINDS = tuple(k for k in PAPER_NAMES if k not in ("lora", "dora"))
STRATEGIES = ("none", "full", "module", *ADAPTER_KINDS)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """The study's loss: soft Dice of sigmoid probabilities over the whole batch taken as one image."""
    p = torch.sigmoid(logits)
    return 1 - (2 * (p * target).sum() + eps) / (p.sum() + target.sum() + eps)


class SegmentationModule(MethodModule):
    has_stages = True  # prepare() builds its cached stages from the data
    architecture_keys = ("net", "strategy", "group", "rank")

    def __init__(self, net: dict[str, Any], strategy: str = "full", group: str = "all", rank: int = 4,
                 alpha: float | None = None, dora_axis: str = "out", norm_policy: str = "frozen",
                 pretrained: str | None = None, loss: str = "softdice", lr: float = 1e-3, weight_decay: float = 0.0,
                 threshold: float = 0.5, sw_roi: list[int] | None = None, sw_overlap: float = 0.25,
                 volume_bins: list[float] = DEFAULT_BINS, target_name: str = "target",
                 pretrain: dict[str, Any] | None = None, optimizer: dict[str, Any] | None = None,
                 scheduler: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{strategy}'; use one of {', '.join(STRATEGIES)}")
        if norm_policy not in ("frozen", "adabn", "affine"):
            raise ValueError(f"norm_policy must be frozen, adabn or affine, got '{norm_policy}'")
        if loss not in ("softdice", "dicece"):
            raise ValueError(f"loss must be softdice or dicece, got '{loss}'")
        self.net = create_model(f"segmentation/{net.get('name', 'unet')}", **{k: v for k, v in net.items() if k != 'name'})
        if pretrained:
            load_base_weights(self.net, load_state_dict(pretrained), pretrained)
        self._apply_strategy()
        self.dicece = DiceCELoss(sigmoid=True)
        self.case_results: list = []

    # -- what trains
    def _groups(self) -> list[str] | str:
        if self.hparams.group == "all":
            return ".*"
        groups = self.net.adapter_groups
        if self.hparams.group not in groups:
            raise ValueError(f"unknown module group '{self.hparams.group}'; use all or {', '.join(groups)}")
        return [self.hparams.group]

    def _apply_strategy(self) -> None:
        hp = self.hparams
        self.adapter_only_checkpoints = hp.strategy in ADAPTER_KINDS
        if hp.strategy == "full":
            return
        for p in self.net.parameters():
            p.requires_grad_(False)
        if hp.strategy == "module":
            target = self._groups()
            for name, module in self.net.named_modules():
                hit = (target == ".*") or any(name == g or name.startswith(g + ".")
                                              for g in self.net.adapter_groups[target[0]])
                if hit:
                    for p in module.parameters():
                        p.requires_grad_(True)
        elif hp.strategy in ADAPTER_KINDS:
            self.adapter_report = inject(self.net, AdapterConfig(kind=hp.strategy, rank=hp.rank, alpha=hp.alpha,
                                                                 dora_axis=hp.dora_axis, target=self._groups()))
        if hp.norm_policy == "affine":
            for m in self.net.modules():
                if isinstance(m, _BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.hparams.strategy != "full" and self.hparams.norm_policy != "adabn":
            for m in self.net.modules():  # frozen statistics: BatchNorm stays in eval mode
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @classmethod
    def pool_folds(cls, out: Path, fold_dirs) -> None:
        """``fold=all``: every fold's ``per_case.csv`` as one table (each case once, from the fold that held it out)."""
        parts = [Path(d) / "per_case.csv" for d in fold_dirs]
        if all(p.exists() for p in parts):
            from transfer.metrics.clinical import cases_from_csv

            cases = [c for p in parts for c in cases_from_csv(p.read_text())]
            atomic_write_text(Path(out) / "per_case.csv", cases_to_csv(cases))

    # -- the toy's pre-training stage
    def prepare(self, datamodule, run: L.Trainer | None = None) -> None:
        spec = self.hparams.pretrain
        if not spec:
            return
        datalist = getattr(datamodule, "source_datalist", None) if spec.get("datalist", "source") == "source" else spec["datalist"]
        path = stage_file(spec["cache_dir"], "seg-pretrained", {"net": self.hparams.net, "spec": spec, "data": str(datalist)},
                          code=(__name__, "transfer.models.unets"), run=run)
        cached_stage(path, lambda: self._pretrain(datamodule, datalist, spec, run))
        load_base_weights(self.net, load_state_dict(path), str(path))

    def _pretrain(self, datamodule, datalist, spec: dict, run: L.Trainer | None) -> dict[str, torch.Tensor]:
        from datamodules.volumes import VolumeDataModule

        L.seed_everything(spec.get("seed", 0), verbose=False)
        stage = SegmentationModule(net=self.hparams.net, strategy="full", loss=self.hparams.loss, lr=spec.get("lr", 1e-3))
        data = VolumeDataModule(str(datalist), folds_file="", train_on="all", batch_size=spec.get("batch_size", 4),
                                window=datamodule.window, roi=datamodule.roi, flip=datamodule.flip)
        trainer = stage_trainer(run, max_steps=spec["steps"], max_epochs=-1)
        trainer.fit(stage, datamodule=data)
        return stage.net.state_dict()

    # -- steps
    def forward(self, x):
        return forward_any_size(self.net, x)

    def training_step(self, batch, batch_idx):
        logits = self(batch["image"])
        target = batch["label"]
        loss = soft_dice_loss(logits, target) if self.hparams.loss == "softdice" else self.dicece(logits, target)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(target))
        return loss

    def _probabilities(self, image: torch.Tensor) -> torch.Tensor:
        roi = self.hparams.sw_roi
        if roi:
            logits = sliding_window_inference(image, roi, 1, self, overlap=self.hparams.sw_overlap, mode="gaussian")
        else:
            logits = self(image)
        return torch.sigmoid(logits)

    def on_test_epoch_start(self) -> None:
        self.case_results = []

    def test_step(self, batch, batch_idx):
        prob = self._probabilities(batch["image"])
        label = batch["label"]
        for i in range(len(label)):
            spacing = affine_to_spacing(label.affine[i] if label.affine.dim() == 3 else label.affine, r=3).tolist()
            fold = batch.get("fold")
            self.case_results.append(case_result(
                str(batch["case_id"][i]), int(fold[i]) if fold is not None else None, prob[i, 0], label[i, 0],
                spacing, self.hparams.threshold, self.hparams.volume_bins))

    def on_test_epoch_end(self) -> None:
        self.case_results = sorted(gather(self.case_results), key=lambda c: c.case_id)
        if not self.case_results:
            return
        summary = summarize(self.case_results, self.hparams.volume_bins)
        summary["trainable_params"] = self.trainable_parameters
        name = self.hparams.target_name
        for k, v in summary.items():
            if v == v:  # NaN regression terms (fewer than 2 cases) are left out of the log
                self.log(f"test/{name}/{k}", float(v), sync_dist=False)  # identical on every rank
        if self.trainer.is_global_zero:
            atomic_write_text(Path(self.trainer.default_root_dir) / "per_case.csv", cases_to_csv(self.case_results))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("strategy 'none' trains nothing: run it with train=false")
        hp = self.hparams
        opt = make_optimizer(params, hp.optimizer, lambda g: torch.optim.Adam(g, lr=hp.lr, weight_decay=hp.weight_decay))
        return configured(opt, make_scheduler(opt, hp.scheduler))

    # -- checkpoints: adapters (+ re-estimated BatchNorm statistics) only, for adapter strategies
    def partial_checkpoint_keys(self) -> set[str] | None:
        if not self.adapter_only_checkpoints:
            return None
        keys = set(adapter_state_dict(self))
        if self.hparams.norm_policy == "adabn":
            keys |= {f"net.{n}.{b}" for n, m in self.net.named_modules() if isinstance(m, _BatchNorm)
                     for b, _ in m.named_buffers()}
        return keys
