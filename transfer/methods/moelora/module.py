"""Spoofing countermeasure on wav2vec2: ``mode`` full (all weights), head (frozen backbone), lora (one LoRA on
the attention projections) or moe (MoE-LoRA: E experts + a router per attention block).

Scores are log P(bona fide). Testing gives, per named set, the EER, the EER per attack, an ASVspoof score
file (``scores_<set>.txt``) and the experts' usage as gate mass per set (``expert_usage.json`` + PNG); ``ood_mean`` is the
unweighted mean EER over every test set but ``in_domain``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from transfer.methods.base import MethodModule
from transfer.adapters import (AdapterConfig, MoELoRAConfig, inject, inject_moe_lora,
                               load_balancing_loss, load_base_weights, router_z_loss, routers_of)
from transfer.metrics.distributed import gather
from transfer.metrics.eer import compute_eer, eer_report, plot_det, write_score_file
from transfer.models.wav2vec2 import SpoofClassifier
from transfer.optim import configured, make_optimizer, make_scheduler
from datamodules.files import atomic_write_text
from transfer.stages import cached_stage, stage_file, stage_trainer
from transfer.safeload import load_state_dict

MODES = ("full", "head", "lora", "moe")


class DeepfakeDetectionModule(MethodModule):
    has_stages = True  # prepare() builds its cached stages from the data
    architecture_keys = ("backbone", "mode", "backend")

    def __init__(self, backbone: str = "tiny", weights: str | None = None, mode: str = "moe", lora_rank: int = 8,
                 moe: dict[str, Any] | None = None, targets: list[str] | None = None, lambda_aux: float = 0.01,
                 z_loss: float = 0.0, lr: float = 1e-3, weight_decay: float = 1e-4,
                 class_weights: list[float] | None = None, in_domain: str = "eval", pretext: dict | None = None,
                 backend: str = "mlp", backend_kwargs: dict[str, Any] | None = None,
                 optimizer: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters()
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
        self.net = SpoofClassifier(backbone, weights, backend=backend, backend_kwargs=backend_kwargs)
        targets = targets or ["q_proj", "k_proj", "v_proj", "out_proj"]
        self.adapter_only_checkpoints = mode in ("lora", "moe", "head")
        if mode == "head":
            for p in self.net.backbone.parameters():
                p.requires_grad_(False)
        elif mode == "lora":
            inject(self.net.backbone, AdapterConfig(kind="lora", rank=lora_rank, target=targets))
        elif mode == "moe":
            inject_moe_lora(self.net.backbone, MoELoRAConfig(**{**(moe or {}), "targets": targets}))
        for p in self.net.head.parameters():
            p.requires_grad_(True)
        self._scores: dict[int, list] = defaultdict(list)
        self._usage: dict[int, torch.Tensor] = {}

    # -- the toy's self-supervised pretext stage (cached): degradation classification on bona fide clips
    def prepare(self, datamodule, run: L.Trainer | None = None) -> None:
        spec = self.hparams.pretext
        if not spec:
            return
        path = stage_file(spec["cache_dir"], "wav2vec2-pretext", {"backbone": self.hparams.backbone, "spec": spec},
                          code=(__name__, "transfer.models.wav2vec2", "datamodules.synthetic.spoof"), run=run)
        cached_stage(path, lambda: self._pretext(spec, datamodule.sample_rate, datamodule.length, run))
        load_base_weights(self.net.backbone, load_state_dict(path), str(path))

    def _pretext(self, spec: dict, sr: int, length: int, run: L.Trainer | None) -> dict[str, torch.Tensor]:
        from datamodules.synthetic.spoof import PRETEXT, pretext_set

        L.seed_everything(spec.get("seed", 0), verbose=False)
        x, y = pretext_set(spec["clips"], sr, length / sr, spec.get("seed", 0))
        model = SpoofClassifier(self.hparams.backbone)
        model.head[-1] = torch.nn.Linear(model.head[-1].in_features, len(PRETEXT))
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                           batch_size=spec.get("batch_size", 32), shuffle=True)
        stage = _Pretext(model, spec.get("lr", 1e-3))
        stage_trainer(run, max_steps=spec["steps"], max_epochs=-1).fit(stage, data)
        return model.backbone.state_dict()

    # -- training
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.net(wav)

    def training_step(self, batch, batch_idx):
        wav, label, _ = batch
        weights = torch.tensor(self.hparams.class_weights or [1.0, 1.0], device=wav.device)
        loss = F.cross_entropy(self(wav), label, weight=weights)
        self.log("train/ce", loss, batch_size=len(label))
        if self.hparams.mode == "moe":
            routers = routers_of(self.net)
            aux = load_balancing_loss(routers)
            loss = loss + self.hparams.lambda_aux * aux + (self.hparams.z_loss * router_z_loss(routers) if self.hparams.z_loss else 0)
            self.log("train/balance", aux, batch_size=len(label))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(label))
        return loss

    def _collect(self, batch, idx: int) -> None:
        wav, label, index = batch
        score = self(wav).log_softmax(-1)[:, 1]
        self._scores[idx] += list(zip(index.tolist(), score.tolist(), label.tolist()))
        if self.hparams.mode == "moe":
            # gate mass per expert (summed gate weights), not top-1 counts: uniform gates show as uniform use
            mass = sum(r.gates.detach().reshape(-1, r.num_experts).float().sum(0) for r in routers_of(self.net))
            self._usage[idx] = self._usage.get(idx, 0) + mass.cpu()

    def _gathered(self) -> dict[int, list]:
        """Each set's (trial index, (score, label)) from every process, in trial order."""
        scores = defaultdict(list)
        for k, rows in gather(list(self._scores.items())):
            scores[k] += rows
        return {k: sorted((i, (s, y)) for i, s, y in v) for k, v in scores.items()}

    def on_validation_epoch_start(self) -> None:
        self._scores = defaultdict(list)

    def validation_step(self, batch, batch_idx):
        self._collect(batch, 0)

    def on_validation_epoch_end(self) -> None:
        rows = self._gathered().get(0, [])
        if rows:
            s = np.array([r[1][0] for r in rows])
            y = np.array([r[1][1] for r in rows])
            eer, threshold = compute_eer(s[y == 1], s[y == 0])
            self.log("val/eer", eer, prog_bar=True)
            self.log("val/eer_threshold", threshold)  # the dev-set operating point transfer.predict decides at

    def on_test_epoch_start(self) -> None:
        self._scores, self._usage = defaultdict(list), {}

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._collect(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        names, eers, curves = dm.test_names, {}, {}
        out_dir = Path(self.trainer.default_root_dir)
        for idx, rows in self._gathered().items():
            name, ds = names[idx], dm.test_sets[names[idx]]
            s = np.array([r[1][0] for r in rows])
            y = np.array([r[1][1] for r in rows])
            attacks = [ds.items[r[0]].attack for r in rows]
            report = eer_report(s, y, attacks)
            eers[name] = report["eer"]
            for k, v in report.items():
                self.log(f"test/{name}/{k}", v)
            curves[name] = (s[y == 1], s[y == 0])
            if self.trainer.is_global_zero:
                write_score_file(out_dir / f"scores_{name}.txt", [ds.items[r[0]].utt for r in rows], s)
        if curves and self.trainer.is_global_zero:
            plot_det(curves, out_dir / "det.png")
        if len(eers) > 1 and self.hparams.in_domain in eers:
            self.log("test/ood_mean/eer", float(np.mean([v for k, v in eers.items() if k != self.hparams.in_domain])))
        mass: dict[int, torch.Tensor] = {}
        for i, u in gather(list(self._usage.items())):  # gate mass summed over every process's trials
            mass[i] = mass.get(i, 0) + u
        if mass and self.trainer.is_global_zero:
            usage = {names[i]: (u / u.sum()).tolist() for i, u in sorted(mass.items())}
            atomic_write_text(out_dir / "expert_usage.json", json.dumps(usage, indent=1))
            _plot_usage(usage, out_dir / "expert_usage.png")

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt = make_optimizer(params, hp.optimizer, lambda g: torch.optim.Adam(g, lr=hp.lr, weight_decay=hp.weight_decay))
        return configured(opt, make_scheduler(opt, hp.scheduler))


class _Pretext(L.LightningModule):
    def __init__(self, model, lr: float):
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


def _plot_usage(usage: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    n = len(next(iter(usage.values())))
    width = 0.8 / len(usage)
    for j, (name, shares) in enumerate(usage.items()):
        ax.bar([e + (j - (len(usage) - 1) / 2) * width for e in range(n)], shares, width, label=name)
    ax.set_xticks(range(n), [f"expert {e}" for e in range(n)])
    ax.set_ylabel("share of gate mass")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
