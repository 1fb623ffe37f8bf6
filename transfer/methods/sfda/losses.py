"""Source-free objectives that use only unlabelled target data, and SND for choosing their hyperparameters."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def information_maximization(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """SHOT's IM loss: mean per-sample entropy minus the entropy of the mean prediction (confident and diverse)."""
    p = logits.softmax(-1)
    mean_entropy = -(p * torch.log(p + eps)).sum(-1).mean()
    q = p.mean(0)
    return mean_entropy + (q * torch.log(q + eps)).sum()


@torch.no_grad()
def shot_pseudo_labels(features: torch.Tensor, probs: torch.Tensor, rounds: int = 1) -> torch.Tensor:
    """Self-supervised pseudo-labels: prediction-weighted class centroids in the cosine space of the features
    (with a bias 1 appended), nearest centroid, then ``rounds`` refinements with hard-assignment centroids."""
    f = torch.cat([features, torch.ones(len(features), 1, device=features.device)], 1)
    f = F.normalize(f, dim=1)
    centroids = probs.T @ f / (probs.sum(0)[:, None] + 1e-8)
    labels = (f @ F.normalize(centroids, dim=1).T).argmax(1)
    for _ in range(rounds):
        onehot = F.one_hot(labels, probs.shape[1]).float()
        centroids = onehot.T @ f / (onehot.sum(0)[:, None] + 1e-8)
        labels = (f @ F.normalize(centroids, dim=1).T).argmax(1)
    return labels


def _neighbours(feats: torch.Tensor, bank: torch.Tensor, k: int, self_index: torch.Tensor | None):
    sim = F.normalize(feats, dim=1) @ F.normalize(bank, dim=1).T
    if self_index is not None:
        sim[torch.arange(len(feats)), self_index] = -float("inf")
    return sim.topk(k, dim=1).indices


def nrc_loss(probs: torch.Tensor, feats: torch.Tensor, bank_feats: torch.Tensor, bank_probs: torch.Tensor,
             index: torch.Tensor, k: int = 4) -> torch.Tensor:
    """NRC (simplified: no extended neighbours): pull predictions towards their K nearest neighbours' stored
    predictions, weight 1 for reciprocal neighbours and 0.1 otherwise, plus the diversity term sum p̄ log p̄."""
    nn_idx = _neighbours(feats, bank_feats, k, index)
    back = _neighbours(bank_feats[nn_idx.flatten()], bank_feats, k, nn_idx.flatten())
    reciprocal = (back == index.repeat_interleave(k)[:, None]).any(1).view(-1, k).float()
    weight = reciprocal + 0.1 * (1 - reciprocal)
    attract = -(weight * (probs[:, None, :] * bank_probs[nn_idx]).sum(-1)).sum(1).mean()
    mean = probs.mean(0)
    return attract + (mean * torch.log(mean + 1e-5)).sum()


def aad_loss(probs: torch.Tensor, feats: torch.Tensor, bank_feats: torch.Tensor, bank_probs: torch.Tensor,
             index: torch.Tensor, k: int = 5, alpha: float = 1.0) -> torch.Tensor:
    """AaD: attraction to the K nearest neighbours' predictions, dispersion from the other samples of the batch."""
    nn_idx = _neighbours(feats, bank_feats, k, index)
    attract = -(probs[:, None, :] * bank_probs[nn_idx]).sum(-1).sum(1).mean()
    dots = probs @ probs.T
    disperse = (dots.sum(1) - dots.diagonal()).mean()
    return attract + alpha * disperse


@torch.no_grad()
def snd(probs: torch.Tensor, temperature: float = 0.05) -> float:
    """Soft neighbourhood density (Saito et al. 2021): mean entropy of the softmax over cosine similarities of
    the predictions to all other samples; higher = denser clusters. Used to pick SFDA hyperparameters."""
    p = F.normalize(probs, dim=1)
    sim = p @ p.T
    sim.fill_diagonal_(-float("inf"))
    q = (sim / temperature).softmax(1)
    return float(-(q * torch.log(q + 1e-12)).sum(1).mean())
