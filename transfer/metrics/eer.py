"""Equal error rate for spoofing countermeasures (higher score = more bona fide), per attack and pooled.

The DET curve: all scores sorted (stable); at each threshold the false rejection rate FRR is the share of
bona fide trials at or below it, the false acceptance rate FAR the share of spoof trials above it. The EER
is the mean of FRR and FAR where |FRR - FAR| is smallest; its threshold is returned too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from datamodules.files import atomic_write_text


class ScoreError(ValueError):
    """Scores that cannot give a meaningful EER (NaN/inf, one class missing, hard decisions)."""


def _check(bona: np.ndarray, spoof: np.ndarray) -> None:
    if len(bona) == 0 or len(spoof) == 0:
        raise ScoreError(f"EER needs both classes: {len(bona)} bona fide and {len(spoof)} spoof scores")
    both = np.concatenate([bona, spoof])
    if not np.isfinite(both).all():
        raise ScoreError(f"{int((~np.isfinite(both)).sum())} scores are NaN or infinite")
    if len(np.unique(both)) < 3:
        raise ScoreError("fewer than 3 distinct scores: these look like hard decisions, not scores")


def det_curve(bona: Sequence[float], spoof: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FRR, FAR, thresholds) over every operating point."""
    bona, spoof = np.asarray(bona, float), np.asarray(spoof, float)
    _check(bona, spoof)
    scores = np.concatenate([bona, spoof])
    labels = np.concatenate([np.ones(len(bona)), np.zeros(len(spoof))])
    order = np.argsort(scores, kind="mergesort")
    labels, scores = labels[order], scores[order]
    bona_below = np.cumsum(labels)
    spoof_above = len(spoof) - (np.arange(1, len(scores) + 1) - bona_below)
    frr = np.concatenate([[0.0], bona_below / len(bona)])
    far = np.concatenate([[1.0], spoof_above / len(spoof)])
    thresholds = np.concatenate([[scores[0] - 1e-3], scores])
    return frr, far, thresholds


def compute_eer(bona: Sequence[float], spoof: Sequence[float]) -> tuple[float, float]:
    """(EER in [0, 1], threshold)."""
    frr, far, thr = det_curve(bona, spoof)
    i = int(np.argmin(np.abs(frr - far)))
    return float((frr[i] + far[i]) / 2), float(thr[i])


def eer_report(scores: Sequence[float], labels: Sequence[int], attacks: Sequence[str] | None = None) -> dict[str, float]:
    """Pooled EER and, when attack names are given, one EER per attack (its spoofs vs all bona fide).

    ``labels``: 1 bona fide, 0 spoof."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    out = {"eer": compute_eer(s[y == 1], s[y == 0])[0]}
    if attacks is not None:
        a = np.asarray(attacks)
        for name in sorted(set(a[y == 0])):
            out[f"eer_{name}"] = compute_eer(s[y == 1], s[(y == 0) & (a == name)])[0]
    return out


def pooled_ood_mean(eers: Mapping[str, float], in_domain: str) -> float:
    """Unweighted mean EER over every set except the in-domain one."""
    ood = [v for k, v in eers.items() if k != in_domain]
    if not ood:
        raise ValueError("no out-of-domain set to average")
    return float(np.mean(ood))


def write_score_file(path: str | Path, utts: Sequence[str], scores: Sequence[float]) -> None:
    """ASVspoof score file: one ``utt score`` line per trial (what the 2021 scorers accept)."""
    if len(utts) != len(scores):
        raise ValueError(f"{len(utts)} utterances but {len(scores)} scores")
    atomic_write_text(path, "".join(f"{u} {float(s):.6f}\n" for u, s in zip(utts, scores)))


def plot_det(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path) -> None:
    """DET curves (probit axes) of several systems or sets: ``{name: (bona_scores, spoof_scores)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    clip = lambda p: norm.ppf(np.clip(p, 1e-4, 1 - 1e-4))  # noqa: E731
    for name, (bona, spoof) in curves.items():
        frr, far, _ = det_curve(bona, spoof)
        eer, _ = compute_eer(bona, spoof)
        ax.plot(clip(far), clip(frr), label=f"{name} (EER {100 * eer:.1f} %)")
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.999])  # labelled over the whole clipped range
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(clip(0) - 0.1, clip(1) + 0.1)
    ax.set_ylim(clip(0) - 0.1, clip(1) + 0.1)
    ax.grid(alpha=0.3)
    ax.set_xlabel("false acceptance rate (%)")
    ax.set_ylabel("false rejection rate (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
