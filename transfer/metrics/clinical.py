"""Per-case clinical segmentation metrics with an explicit empty-mask policy.

Policy (no silent NaN): Dice of two empty masks is 1, of one empty mask 0. HD95 of two empty masks is 0 mm;
when exactly one mask is empty it is the diagonal of the volume in mm (the worst possible distance) and the
case is flagged ``hd95_worst_case`` — MONAI would return NaN and the mean would silently skip the case.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

DEFAULT_BINS = (0.0, 25.0, 50.0, 100.0, 225.0)


def volume_ml(mask: torch.Tensor | np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a binary (or probability) mask: sum x voxel volume (mm³) / 1000."""
    total = float(mask.sum())
    return total * float(np.prod(spacing)) / 1000.0


def volume_bin(volume: float, bins: Sequence[float] = DEFAULT_BINS) -> int:
    """Index i of the bin (bins[i], bins[i+1]]; volumes above the last edge go to the last bin."""
    for i in range(len(bins) - 1):
        if volume <= bins[i + 1]:
            return i
    return len(bins) - 2


def bin_label(i: int, bins: Sequence[float] = DEFAULT_BINS) -> str:
    return f"{bins[i]:g}-{bins[i + 1]:g} mL"


def dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Dice of two masks (binary, or probabilities for soft Dice); 1.0 when both are empty."""
    inter = float((pred * label).sum())
    total = float(pred.sum() + label.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def hd95_mm(pred: torch.Tensor, label: torch.Tensor, spacing: Sequence[float]) -> tuple[float, bool]:
    """(HD95 in mm, worst_case flag) for binary masks [D,H,W] (or [H,W])."""
    p, g = pred.bool(), label.bool()
    if not p.any() and not g.any():
        return 0.0, False
    if not p.any() or not g.any():
        return math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, spacing))), True
    value = compute_hausdorff_distance(p[None, None].float(), g[None, None].float(), percentile=95,
                                       spacing=[float(s) for s in spacing])
    return float(value.item()), False


@dataclass
class CaseResult:
    case_id: str
    fold: int | None
    dice: float
    dice_soft: float
    hd95_mm: float
    hd95_worst_case: bool
    true_ml: float
    pred_ml: float
    volume_bin: str


def case_result(case_id: str, fold: int | None, prob: torch.Tensor, label: torch.Tensor, spacing: Sequence[float],
                threshold: float = 0.5, bins: Sequence[float] = DEFAULT_BINS) -> CaseResult:
    """Metrics of one case from foreground probabilities and the binary label (same spatial shape)."""
    prob, label = prob.float().cpu(), label.float().cpu()
    pred = (prob > threshold).float()
    hd, worst = hd95_mm(pred, label, spacing)
    true_ml = volume_ml(label, spacing)
    return CaseResult(case_id, fold, dice(pred, label), dice(prob, label), hd, worst, true_ml,
                      volume_ml(pred, spacing), bin_label(volume_bin(true_ml, bins), bins))


def regression(true: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """Least-squares line pred = slope * true + intercept, and Pearson r."""
    x, y = np.asarray(true, float), np.asarray(pred, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "pearson_r": float("nan")}
    slope, intercept = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else float("nan")
    return {"slope": float(slope), "intercept": float(intercept), "pearson_r": r}


def summarize(cases: Iterable[CaseResult], bins: Sequence[float] = DEFAULT_BINS) -> dict[str, float]:
    """Mean ± SD of Dice and HD95, Dice per volume bin, volume regression."""
    cases = list(cases)
    d = np.array([c.dice for c in cases])
    out = {"n": len(cases), "dice": float(d.mean()), "dice_sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
           "dice_soft": float(np.mean([c.dice_soft for c in cases])),
           "hd95_mm": float(np.mean([c.hd95_mm for c in cases])),
           "hd95_worst_cases": int(sum(c.hd95_worst_case for c in cases))}
    for i in range(len(bins) - 1):
        in_bin = [c.dice for c in cases if c.volume_bin == bin_label(i, bins)]
        if in_bin:
            out[f"dice_bin_{bins[i]:g}_{bins[i + 1]:g}"] = float(np.mean(in_bin))
    out.update({f"volume_{k}": v for k, v in regression([c.true_ml for c in cases], [c.pred_ml for c in cases]).items()})
    return out


def cases_to_csv(cases: Iterable[CaseResult]) -> str:
    rows = [asdict(c) for c in cases]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CaseResult.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def cases_from_csv(text: str) -> list[CaseResult]:
    out = []
    for r in csv.DictReader(io.StringIO(text)):
        out.append(CaseResult(r["case_id"], int(r["fold"]) if r["fold"] not in ("", "None") else None,
                              float(r["dice"]), float(r["dice_soft"]), float(r["hd95_mm"]),
                              r["hd95_worst_case"] == "True", float(r["true_ml"]), float(r["pred_ml"]), r["volume_bin"]))
    return out
