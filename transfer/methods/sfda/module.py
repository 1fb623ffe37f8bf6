"""Stage 2: adapt the exported source model to one target domain, without source data.

``strategy``:
- ``source_only``: the source model as is (run with ``train=false``).
- ``ft`` / ``lp`` / ``lp_ft``: few-shot fine-tuning on the labelled shots (all parameters, BN in train mode /
  the weight-normalised head only, BN frozen / LP for ``lp_steps`` at ``lp_lr`` then FT). Adam, optionally
  wrapped in SAM (on by default); the selected checkpoint is the lowest loss on the held-out shots.
- ``shot`` / ``nrc`` / ``aad``: source-free baselines on the unlabelled pool (classifier frozen, SGD with the
  backbone at 0.1x and SHOT's decay). They log ``val/snd`` (soft neighbourhood density on the pool), which
  ``select_by`` in an experiment uses to choose their hyperparameters, as the paper does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from transfer.methods.base import MethodModule
from transfer.metrics.distributed import gather
from transfer.optim import configured, make_optimizer, make_scheduler, optimizer_class
from transfer.stages import build_file_once, stage_file, stage_trainer

from .losses import aad_loss, information_maximization, nrc_loss, shot_pseudo_labels, snd
from .network import SHOTNet
from .sam import SAM
from .source import load_source_model, shot_schedule, source_model_info

FEW_SHOT = ("ft", "lp", "lp_ft")
SOURCE_FREE = ("shot", "nrc", "aad")
STRATEGIES = ("source_only", *FEW_SHOT, *SOURCE_FREE)


class TargetClassesError(ValueError):
    pass


class FewShotSFDAModule(MethodModule):
    has_stages = True  # prepare() builds its cached stages from the data
    architecture_keys = ("backbone", "bottleneck", "num_classes")
    pooled_val_target = "target"  # val metrics are on the held-out target shots (or the unlabelled pool)

    def __init__(
        self,
        strategy: str = "ft",
        source_model: str | None = None,
        source_stage: dict[str, Any] | None = None,
        backbone: str = "resnet50",
        bottleneck: int = 256,
        num_classes: int | None = None,
        lr: float = 1e-5,
        lp_lr: float = 1e-4,
        lp_steps: int = 400,
        weight_decay: float = 0.0,
        sam: bool = True,
        rho: float = 0.05,
        momentum: float = 0.9,
        backbone_lr_mult: float = 0.1,
        cls_par: float = 0.3,
        ent_par: float = 1.0,
        pseudo_interval: int = 1,
        knn: int = 4,
        aad_alpha: float = 1.0,
        aad_beta: float = 5.0,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
    ):
        super().__init__()
        if source_stage is not None and not isinstance(source_stage, dict):  # a DictConfig (_recursive_: false)
            from omegaconf import OmegaConf

            source_stage = OmegaConf.to_container(source_stage, resolve=True)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got '{strategy}'")
        if source_model is None and source_stage is None:
            raise ValueError("give model.source_model (an exported source model) or model.source_stage (toys)")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net: SHOTNet | None = None
        if num_classes is not None:  # restoring from a checkpoint: the weights come with it
            self.net = SHOTNet(backbone, num_classes, bottleneck)

    # -- the source model
    def prepare(self, datamodule, run: L.Trainer | None = None) -> None:
        """Toys only: train the source model once on the source domains (``source_stage``), cached by its
        settings. The adaptation data module never sees those domains."""
        stage = self.hparams.source_stage
        if not stage or (self.hparams.source_model and Path(self.hparams.source_model).is_file()):
            return
        path = stage_file(stage["cache_dir"], "sfda-source", stage,
                          code=(__name__, "transfer.methods.sfda.source", "transfer.methods.sfda.network"), run=run)
        build_file_once(path, lambda p: train_source_stage(stage, p, self.hparams.backbone, self.hparams.bottleneck, run))
        self.hparams.source_model = str(path)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        path = self.hparams.source_model
        if self.net is None:
            if path is None:
                raise ValueError("no source model: call prepare() (source_stage) or set model.source_model")
            info = source_model_info(path)
            if dm is not None and tuple(info["classes"]) != tuple(dm.classes):
                missing = [c for c in dm.classes if c not in info["classes"]]
                raise TargetClassesError(
                    f"target classes do not match the source model's label space ({path}): "
                    + (f"{missing} are not among its classes" if missing else
                       f"source has {len(info['classes'])} classes {info['classes'][:8]}..., target {len(dm.classes)}"))
            self.net = SHOTNet(self.hparams.backbone, len(info["classes"]), self.hparams.bottleneck)
            load_source_model(self.net, path, self.hparams.backbone, self.hparams.bottleneck)
            self.hparams.num_classes = len(info["classes"])
        elif dm is not None and dm.num_classes != self.hparams.num_classes:
            raise TargetClassesError(f"model has {self.hparams.num_classes} classes, the target has {dm.num_classes}")
        if dm is not None and stage == "fit":
            wanted = "unlabelled" if self.hparams.strategy in SOURCE_FREE else "shots"
            if dm.train_on != wanted:
                raise ValueError(f"strategy '{self.hparams.strategy}' trains on the {wanted} target data, but "
                                 f"data.train_on is '{dm.train_on}': set data.train_on={wanted}"
                                 + (" (the @unlabelled override set does, with the source-free schedule)"
                                    if wanted == "unlabelled" else ""))
        n = self.hparams.num_classes
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.test_acc = MulticlassAccuracy(n, average="micro")
        self.test_mean_class = MulticlassAccuracy(n, average="macro")
        self.target_name = dm.test_names[0] if dm is not None else "target"
        self._val_probs: list[torch.Tensor] = []
        self._test_probs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- training
    @property
    def _in_lp_stage(self) -> bool:
        s = self.hparams.strategy
        return s == "lp" or (s == "lp_ft" and self.global_step < self.hparams.lp_steps)

    def _set_modes(self) -> None:
        """FT runs BatchNorm in train mode on the few-shot batches (faithful to the paper); LP keeps it frozen."""
        if self._in_lp_stage:
            self.net.eval()
            self.net.set_trainable("cls")
        elif self.hparams.strategy in SOURCE_FREE:
            self.net.train()
            self.net.set_trainable("feat")  # the source classifier stays fixed (hypothesis transfer)
        else:
            self.net.train()
            self.net.set_trainable("all")

    def configure_optimizers(self):
        hp, net = self.hparams, self.net
        if hp.strategy in SOURCE_FREE:
            groups = [{"params": list(net.netF.parameters()), "lr": hp.lr * hp.backbone_lr_mult},
                      {"params": list(net.netB.parameters()), "lr": hp.lr}]
            opt = make_optimizer(groups, hp.optimizer,
                                 lambda g: torch.optim.SGD(g, momentum=hp.momentum, nesterov=True, weight_decay=1e-3))
            return configured(opt, make_scheduler(opt, hp.scheduler,
                                                  lambda o: shot_schedule(o, self.trainer.estimated_stepping_batches)))
        head = list(net.netC.parameters())
        body = [p for n, p in net.named_parameters() if not n.startswith("netC.")]
        head_lr = hp.lp_lr if hp.strategy in ("lp", "lp_ft") else hp.lr
        groups = [{"params": head, "lr": head_lr}, {"params": body, "lr": hp.lr}]
        if hp.sam:  # SAM wraps the recipe's Adam, or the optimiser model.optimizer names
            base, kwargs = optimizer_class(hp.optimizer) if hp.optimizer else \
                (torch.optim.Adam, {"lr": hp.lr, "weight_decay": hp.weight_decay})
            return SAM(groups, base, rho=hp.rho, **kwargs)
        opt = make_optimizer(groups, hp.optimizer, lambda g: torch.optim.Adam(g, lr=hp.lr, weight_decay=hp.weight_decay))
        return configured(opt, make_scheduler(opt, hp.scheduler))

    def on_train_epoch_start(self) -> None:
        if self.hparams.strategy == "shot" and self.current_epoch % self.hparams.pseudo_interval == 0:
            feats, probs = self._encode_pool()
            self.pseudo = shot_pseudo_labels(feats, probs)
        elif self.hparams.strategy in ("nrc", "aad") and self.current_epoch == 0:
            self.bank_feats, self.bank_probs = self._encode_pool()
            self.bank_feats = F.normalize(self.bank_feats, dim=1)

    @torch.no_grad()
    def _encode_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.net.training
        self.net.eval()
        feats, probs = [], []
        for x, _, _ in self.trainer.datamodule.pool_dataloader():
            f = self.net.features(x.to(self.device))
            feats.append(f)
            probs.append(self.net.netC(f).softmax(1))
        self.net.train(was_training)
        return torch.cat(feats), torch.cat(probs)

    def _loss(self, batch) -> torch.Tensor:
        x, y, idx = batch
        s = self.hparams.strategy
        if s in FEW_SHOT:
            return F.cross_entropy(self.net(x), y)
        feats = self.net.features(x)
        logits = self.net.netC(feats)
        if s == "shot":
            loss = self.hparams.ent_par * information_maximization(logits)
            return loss + self.hparams.cls_par * F.cross_entropy(logits, self.pseudo[idx])
        probs = logits.softmax(1)
        self._update_bank(idx, feats, probs)
        if s == "nrc":
            return nrc_loss(probs, feats, self.bank_feats, self.bank_probs, idx, k=self.hparams.knn)
        progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)
        alpha = self.hparams.aad_alpha * (1 + 10 * progress) ** (-self.hparams.aad_beta)
        return aad_loss(probs, feats, self.bank_feats, self.bank_probs, idx, k=self.hparams.knn, alpha=alpha)

    @torch.no_grad()
    def _update_bank(self, idx, feats, probs) -> None:
        idx, feats, probs = (t.reshape(-1, *t.shape[2:]) if self.trainer.world_size > 1 else t
                             for t in (self.all_gather(idx), self.all_gather(feats.detach()), self.all_gather(probs.detach())))
        self.bank_feats[idx] = F.normalize(feats, dim=1)
        self.bank_probs[idx] = probs

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        if hp.strategy == "lp_ft" and self.global_step == hp.lp_steps:
            self._start_ft_stage()
        self._set_modes()
        opt = self.optimizers()
        loss = self._loss(batch)
        self.manual_backward(loss)
        if isinstance(opt.optimizer, SAM):
            def closure():
                perturbed = self._loss(batch)
                self.manual_backward(perturbed)
                return perturbed
            opt.step(closure=closure)
        else:
            opt.step()
        opt.zero_grad()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch[0]))

    def _start_ft_stage(self) -> None:
        """LP-FT: the FT stage starts from the LP stage's last weights with a fresh Adam at the FT lr."""
        opt = self.optimizers().optimizer
        base = opt.base_optimizer if isinstance(opt, SAM) else opt
        base.state.clear()
        for group in opt.param_groups:
            group["lr"] = self.hparams.lr

    # -- evaluation
    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = self.net(x)
        if self.hparams.strategy in SOURCE_FREE or (y < 0).any():  # the unlabelled pool: SND only
            self._val_probs.append(logits.softmax(1))
            return
        self.val_acc.update(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), batch_size=len(y))
        self.log("val/acc", self.val_acc, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self._val_probs:
            self.log("val/snd", snd(torch.cat(gather(self._val_probs))))
            self._val_probs = []

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y, _ = batch
        logits = self.net(x)
        self.test_acc.update(logits, y)
        self.test_mean_class.update(logits, y)
        self._test_probs.append(logits.softmax(1))
        self.log(f"test/{self.target_name}/acc", self.test_acc, add_dataloader_idx=False)
        self.log(f"test/{self.target_name}/mean_class_acc", self.test_mean_class, add_dataloader_idx=False)

    def on_test_epoch_end(self) -> None:
        self.log(f"test/{self.target_name}/snd", snd(torch.cat(gather(self._test_probs))))
        self._test_probs = []


def train_source_stage(stage: dict[str, Any], path: Path, backbone: str, bottleneck: int, run: L.Trainer | None = None) -> None:
    """Train a SHOT source model on ``stage['data']`` (a domain data module config) and export it to ``path``."""
    from hydra.utils import instantiate

    from .source import SHOTSourceModule

    L.seed_everything(stage.get("seed", 0), verbose=False)
    dm = instantiate(stage["data"], _convert_="all")
    tmp = path.with_name(path.name + ".partial")  # exported at each best source-val accuracy, renamed when done
    module = SHOTSourceModule(backbone=backbone, bottleneck=bottleneck, export_path=str(tmp), **stage.get("model", {}))
    trainer = stage_trainer(run, max_epochs=stage["max_epochs"], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    tmp.replace(path)
