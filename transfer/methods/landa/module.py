"""LanDA (Wang et al. 2024, arXiv 2401.14148) and its baselines on cached, frozen CLIP embeddings.

The paper's code and equations are unpublished; this follows the project spec (LADS-based stage 1, marked
reconstructions as switches). ``method``:

- ``zero_shot``: cos(z, text of the target prompt) / 0.01, no training (run with ``train=false``).
- ``lp``: a linear probe on the pooled source embeddings. ``lp_zs``: its softmax averaged with zero-shot.
  ``zs_weight`` mixes the zero-shot softmax into ``lads``/``landa`` predictions the same way (0 = heads only).
- ``lads``: per-source augmenters (stage 1: L_dir + L_cc), then a linear probe on original + augmented.
- ``landa``: stage 1 (+ optional OT consistency between the augmented sets, ``lambda_dc``), stage 2 a shared
  projector P (identity init) and one head per extended domain, with OT between the extended domains
  (``lambda_w``) and to the class-text anchors (``lambda_t``); inference weighs the heads by the text
  similarity of each source description to the target description (``tau_w``).

No target image is used: the target exists only as ``target_prompt``.

Both stages train full-batch on cached embeddings, where one optimizer step costs far less than Lightning's
per-step work (hooks, logging). ``steps_per_batch=K`` makes K optimizer steps on each batch (Lightning's manual
optimisation), so an epoch is K steps on a full batch and ``aug_epochs`` / ``max_epochs`` count epochs of K steps.
"""

from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import lightning as L
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from transfer.methods.base import MethodModule
from transfer.optim import configured, make_optimizer, make_scheduler

from .ot import ot_distance, text_aware_cost

METHODS = ("zero_shot", "lp", "lp_zs", "lads", "landa")

log = logging.getLogger("transfer")


class MissingDescriptionError(ValueError):
    pass


def templates(prompt: str | Sequence[str]) -> list[str]:
    """A description is one template ("a sketch of a {}") or several, whose text embeddings are averaged per class
    (CLIP's prompt ensembling)."""
    return [prompt] if isinstance(prompt, str) else list(prompt)


class Augmenter(nn.Module):
    """LADS's MLP d -> d/2 -> d; ``residual`` adds the input (needed in the reference toy), starting at identity."""

    def __init__(self, dim: int, hidden_ratio: float = 0.5, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * hidden_ratio)), nn.ReLU(), nn.Linear(int(dim * hidden_ratio), dim))
        if residual:
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.mlp(z)
        return F.normalize(z + out if self.residual else out, dim=-1)


class LanDAModule(MethodModule):
    has_stages = True  # prepare() builds its cached stages from the data
    architecture_keys = ("method", "embed_dim", "num_classes", "num_sources")
    pooled_val_target = "source"

    def __init__(
        self,
        method: str = "landa",
        target_prompt: str | Sequence[str] | None = None,
        source_prompts: Mapping[str, str | Sequence[str]] | None = None,
        class_prompt: str | Sequence[str] = "a photo of a {}",
        embed_dim: int | None = None,
        num_classes: int | None = None,
        num_sources: int | None = None,
        # stage 1: augmenters
        aug_epochs: int = 300,
        aug_lr: float = 1e-2,
        aug_weight_decay: float = 0.0,
        residual: bool = True,
        hidden_ratio: float = 0.5,
        alpha: float = 0.8,
        tau_cc: float = 1.0,
        dir_on_normalized: bool = True,
        lambda_dc: float = 0.0,
        # stage 2: projector + heads
        lr: float = 5e-3,
        weight_decay: float = 0.05,
        heads: str = "per_domain",
        lambda_w: float = 0.5,
        lambda_t: float = 0.0,
        beta_text: float = 1.0,
        ot_solver: str = "emd",
        ot_reg: float = 0.05,
        ot_samples: int = 256,
        tau_w: float = 0.1,
        zs_temperature: float = 0.01,
        zs_weight: float | None = None,
        class_weighted: bool = True,
        clip_pretrain: dict | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        steps_per_batch: int = 1,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
        if not target_prompt or not all("{}" in t for t in templates(target_prompt)):
            raise MissingDescriptionError(
                "LanDA needs model.target_prompt, a text description of the target domain with {} for the class "
                f"name (e.g. 'a sketch of a {{}}'); got {target_prompt!r}")
        if heads not in ("per_domain", "shared"):
            raise ValueError(f"heads must be per_domain or shared, got '{heads}'")
        if zs_weight is not None and not 0.0 <= zs_weight <= 1.0:
            raise ValueError(f"zs_weight is the zero-shot share of the prediction, in [0, 1]; got {zs_weight}")
        if method in ("zero_shot", "lp") and zs_weight:
            raise ValueError(f"method={method} with zs_weight={zs_weight}: use method=lp_zs for the LP + zero-shot "
                             "ensemble (zero_shot is zero-shot already)")
        if int(steps_per_batch) < 1:
            raise ValueError(f"steps_per_batch is the number of optimizer steps on each batch, >= 1; got {steps_per_batch}")
        self.save_hyperparameters()
        self.automatic_optimization = int(steps_per_batch) == 1
        self._scheduler_interval = None
        self.built = False
        if None not in (embed_dim, num_classes, num_sources):
            self._build(embed_dim, num_classes, num_sources)

    def prepare(self, datamodule, run: L.Trainer | None = None) -> None:
        """Toys only: contrastive pre-training of the tiny CLIP (``clip_pretrain``), cached by its settings."""
        if self.hparams.clip_pretrain:
            from .pretrain import pretrain_clip

            datamodule.encoder.load_weights(pretrain_clip(datamodule.encoder, dict(self.hparams.clip_pretrain), run))

    # -- structure
    @property
    def uses_augmenters(self) -> bool:
        return self.hparams.method in ("lads", "landa")

    @property
    def n_heads(self) -> int:
        per_domain = self.hparams.method == "landa" and self.hparams.heads == "per_domain"
        return self.hparams.num_sources if per_domain else 1

    def _build(self, dim: int, num_classes: int, num_sources: int) -> None:
        hp = self.hparams
        hp.embed_dim, hp.num_classes, hp.num_sources = dim, num_classes, num_sources
        self.augmenters = nn.ModuleList(
            [Augmenter(dim, hp.hidden_ratio, hp.residual) for _ in range(num_sources if self.uses_augmenters else 0)])
        self.projector = nn.Linear(dim, dim)
        with torch.no_grad():
            self.projector.weight.copy_(torch.eye(dim))
            self.projector.bias.zero_()
        self.projector.requires_grad_(hp.method == "landa")
        self.heads = nn.ModuleList([nn.Linear(dim, num_classes) for _ in range(self.n_heads)])
        for name in ("text_target", "text_class", "text_sources", "domain_weights", "class_weights"):
            self.register_buffer(name, torch.zeros(0), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_bal_acc = MulticlassAccuracy(num_classes, average="macro")
        self.test_acc = nn.ModuleDict()
        self.built = True

    def _check_landa_can_run(self, num_sources: int) -> None:
        """LanDA needs its second stage (heads after the augmenters) and, for its OT term, two extended domains."""
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and max_epochs <= self.hparams.aug_epochs:
            raise ValueError(f"method=landa with trainer.max_epochs={max_epochs} <= model.aug_epochs="
                             f"{self.hparams.aug_epochs}: the projector and heads would never train (that is LADS's "
                             f"first stage only). Raise max_epochs or lower aug_epochs")
        if num_sources < 2 and self.hparams.lambda_w > 0:
            log.warning("method=landa with one source domain: OT between extended domains has no pair and there is one "
                        "head, so this run is augmenters + a probe (LADS-like); lambda_w has no effect")

    def setup(self, stage: str) -> None:
        self.attach_data(self.trainer.datamodule, stage)

    def attach_data(self, dm, stage: str = "predict") -> None:
        """Text embeddings of the descriptions and class names through ``dm``'s CLIP, the heads built for its
        classes and sources (before a checkpoint loads into them); ``stage='fit'`` also reads the class counts."""
        encoder = dm.encoder
        prompts = dict(self.hparams.source_prompts or {})
        missing = [s for s in dm.sources if s not in prompts]
        if missing:
            raise MissingDescriptionError(f"model.source_prompts has no description for source domain(s) {missing} "
                                          f"(has: {sorted(prompts)})")
        if stage == "fit" and self.hparams.method == "landa":
            self._check_landa_can_run(len(dm.sources))
        text_target = encoder.class_text(templates(self.hparams.target_prompt), dm.classes)
        if not self.built:
            self._build(text_target.shape[1], dm.num_classes, len(dm.sources))
        elif (self.hparams.num_classes, self.hparams.num_sources) != (dm.num_classes, len(dm.sources)):
            raise ValueError(f"model was built for {self.hparams.num_classes} classes / {self.hparams.num_sources} "
                             f"sources, the data has {dm.num_classes} / {len(dm.sources)}")
        self.text_target = text_target.to(self.device)
        self.text_class = encoder.class_text(templates(self.hparams.class_prompt), dm.classes).to(self.device)
        self.text_sources = torch.stack([encoder.class_text(templates(prompts[s]), dm.classes) for s in dm.sources]).to(self.device)
        e_t = F.normalize(self.text_target.mean(0), dim=-1)
        e_k = F.normalize(self.text_sources.mean(1), dim=-1)
        self.domain_weights = ((e_k @ e_t) / self.hparams.tau_w).softmax(0)
        labels = torch.cat([dm.split(f"{s}/train").tensors[1] for s in dm.sources]) if stage == "fit" else None
        if labels is not None:
            counts = torch.bincount(labels, minlength=dm.num_classes).float().clamp_min(1)
            w = 1.0 / counts
            self.class_weights = (w / w.max() if self.hparams.class_weighted else torch.ones_like(w)).to(self.device)
        for name in dm.test_names:
            if name not in self.test_acc:
                self.test_acc[name] = MulticlassAccuracy(dm.num_classes, average="micro")
        self.test_names = list(dm.test_names)

    # -- prediction
    @property
    def zs_share(self) -> float:
        """Share of the zero-shot softmax in the prediction: 0.5 for lp_zs, ``zs_weight`` (default 0) otherwise."""
        if self.hparams.method == "lp_zs":
            return 0.5 if self.hparams.zs_weight is None else float(self.hparams.zs_weight)
        return float(self.hparams.zs_weight or 0.0)

    def _mix_zero_shot(self, p: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
        w = self.zs_share
        return (1 - w) * p + w * zs if w else p

    def zero_shot_logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.text_target.T / self.hparams.zs_temperature

    def head_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(heads, N, C) logits of the probe heads on P z."""
        pz = self.projector(z)
        return torch.stack([h(pz) for h in self.heads])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Class probabilities for target embeddings."""
        m = self.hparams.method
        if m == "zero_shot":
            return self.zero_shot_logits(z).softmax(-1)
        probs = self.head_logits(z).softmax(-1)
        if self.n_heads > 1:
            p = (self.domain_weights[:, None, None] * probs).sum(0)
        else:
            p = probs[0]
        return self._mix_zero_shot(p, self.zero_shot_logits(z).softmax(-1)) if self.zs_share else p

    # -- training
    @property
    def in_stage1(self) -> bool:
        return self.uses_augmenters and self.current_epoch < self.hparams.aug_epochs

    def stage1_loss(self, z, y, d) -> dict[str, torch.Tensor]:
        hp = self.hparams
        out = {"dir": z.new_zeros(()), "cc": z.new_zeros(()), "dc": z.new_zeros(())}
        augmented = []
        for k, aug in enumerate(self.augmenters):
            sel = d == k
            if not sel.any():
                continue
            zk, yk = z[sel], y[sel]
            zh = aug(zk)
            moved = (zh if hp.dir_on_normalized else aug.mlp(zk) + (zk if hp.residual else 0)) - zk
            direction = self.text_target[yk] - self.text_sources[k][yk]
            out["dir"] = out["dir"] + (1 - F.cosine_similarity(moved, direction, dim=-1)).mean()
            logits = zh @ self.text_class.T / hp.tau_cc
            out["cc"] = out["cc"] + F.cross_entropy(logits, yk, weight=self.class_weights)
            augmented.append((zh, yk))
        if hp.lambda_dc:
            for i in range(len(augmented)):
                for j in range(i + 1, len(augmented)):
                    out["dc"] = out["dc"] + self._ot(*augmented[i], *augmented[j], self.text_target)
        out["loss"] = hp.alpha * out["dir"] + (1 - hp.alpha) * out["cc"] + hp.lambda_dc * out["dc"]
        return out

    def _ot(self, x1, y1, x2, y2, text) -> torch.Tensor:
        n = self.hparams.ot_samples
        if len(x1) > n:
            i = torch.randperm(len(x1), device=x1.device)[:n]
            x1, y1 = x1[i], y1[i]
        if len(x2) > n:
            j = torch.randperm(len(x2), device=x2.device)[:n]
            x2, y2 = x2[j], y2[j]
        cost = text_aware_cost(x1, y1, x2, y2, text, self.hparams.beta_text)
        return ot_distance(cost, self.hparams.ot_solver, self.hparams.ot_reg)

    def stage2_loss(self, z, y, d) -> dict[str, torch.Tensor]:
        hp = self.hparams
        out = {"ce": z.new_zeros(()), "w": z.new_zeros(()), "t": z.new_zeros(())}
        extended = []  # (P e, y) per source: original + augmented copies
        for k in range(hp.num_sources):
            sel = d == k
            if not sel.any():
                continue
            zk, yk = z[sel], y[sel]
            if self.uses_augmenters:
                with torch.no_grad():
                    zk, yk = torch.cat([zk, self.augmenters[k](zk)]), torch.cat([yk, yk])
            extended.append((self.projector(zk), yk, k))
        for pz, yk, k in extended:
            head = self.heads[k if self.n_heads > 1 else 0]
            out["ce"] = out["ce"] + F.cross_entropy(head(pz), yk, weight=self.class_weights) * len(yk)
        out["ce"] = out["ce"] / sum(len(e[1]) for e in extended)
        if hp.method == "landa" and hp.lambda_w:
            for i in range(len(extended)):
                for j in range(i + 1, len(extended)):
                    out["w"] = out["w"] + self._ot(extended[i][0], extended[i][1], extended[j][0], extended[j][1],
                                                   self.text_target)
        if hp.method == "landa" and hp.lambda_t:
            anchors = self.projector(self.text_target)
            anchors = anchors - anchors.mean(0)  # centre each modality: the image-text gap is not a class signal
            labels = torch.arange(hp.num_classes, device=z.device)
            for pz, yk, _ in extended:
                out["t"] = out["t"] + self._ot(pz - pz.mean(0), yk, anchors, labels, self.text_target)
        out["loss"] = out["ce"] + hp.lambda_w * out["w"] + hp.lambda_t * out["t"]
        return out

    def training_step(self, batch, batch_idx):
        z, y, d = batch
        losses = self.stage1_loss if self.in_stage1 else self.stage2_loss
        out = losses(z, y, d) if self.automatic_optimization else self._steps_on_batch(losses, z, y, d)
        stage = "aug" if self.in_stage1 else "clf"
        for k, v in out.items():
            self.log(f"train/{stage}_{k}", v.detach(), batch_size=len(y), prog_bar=k == "loss")
        return out["loss"]

    def _steps_on_batch(self, losses, z, y, d) -> dict[str, torch.Tensor]:
        """``steps_per_batch`` optimizer steps on one batch; returns the losses' means over those steps."""
        opt, scheduler = self.optimizers(), self.lr_schedulers()
        total: dict[str, torch.Tensor] = {}
        for _ in range(self.hparams.steps_per_batch):
            out = losses(z, y, d)
            opt.zero_grad()
            self.manual_backward(out["loss"])
            opt.step()
            if scheduler is not None and self._scheduler_interval == "step":
                scheduler.step()
            for k, v in out.items():
                total[k] = total.get(k, 0) + v.detach()
        return {k: v / self.hparams.steps_per_batch for k, v in total.items()}

    def on_train_epoch_end(self) -> None:
        scheduler = None if self.automatic_optimization else self.lr_schedulers()
        if scheduler is not None and self._scheduler_interval == "epoch":
            scheduler.step()

    def configure_optimizers(self):
        hp = self.hparams
        groups = [{"params": [*self.projector.parameters(), *self.heads.parameters()], "lr": hp.lr,
                   "weight_decay": hp.weight_decay}]
        if self.uses_augmenters:
            groups.append({"params": list(self.augmenters.parameters()), "lr": hp.aug_lr,
                           "weight_decay": hp.aug_weight_decay})
        # foreach: one call per step for all parameters (same numbers as the per-tensor loop, a fraction of its
        # Python cost on a CPU, where the foreach path is not PyTorch's default)
        opt = make_optimizer(groups, hp.optimizer, partial(torch.optim.AdamW, foreach=True))
        scheduler = make_scheduler(opt, hp.scheduler)
        self._scheduler_interval = scheduler["interval"] if scheduler else None  # stepped here when steps_per_batch > 1
        return configured(opt, scheduler)

    def on_train_epoch_start(self) -> None:
        # each stage trains its own parameters; AdamW skips parameters without gradients
        self.augmenters.requires_grad_(self.in_stage1)
        self.heads.requires_grad_(not self.in_stage1)
        self.projector.requires_grad_(not self.in_stage1 and self.hparams.method == "landa")

    # -- evaluation
    def validation_step(self, batch, batch_idx):
        z, y, d = batch
        p = self._source_probs(z, d)
        self.val_acc.update(p, y)
        self.val_bal_acc.update(p, y)
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/bal_acc", self.val_bal_acc)

    def _source_probs(self, z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Source-domain predictions: zero-shot with each sample's source description; the probe heads averaged
        (no target weighting), mixed with that zero-shot like the target prediction."""
        zs = ((z[:, None, :] * self.text_sources[d]).sum(-1) / self.hparams.zs_temperature).softmax(-1)
        if self.hparams.method == "zero_shot":
            return zs
        p = self.head_logits(z).softmax(-1).mean(0)
        return self._mix_zero_shot(p, zs)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        z, y, d = batch
        name = self.test_names[dataloader_idx]
        p = self(z) if name in self.trainer.datamodule.targets else self._source_probs(z, d)
        metric = self.test_acc[name]
        metric.update(p, y)
        self.log(f"test/{name}/acc", metric, add_dataloader_idx=False)
