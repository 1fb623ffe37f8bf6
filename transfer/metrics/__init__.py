"""Metrics that torchmetrics/MONAI lack: clinical segmentation report (volumes, bins, regression)."""

from .clinical import CaseResult, case_result, dice, hd95_mm, regression, summarize, volume_bin, volume_ml

__all__ = ["CaseResult", "case_result", "dice", "hd95_mm", "regression", "summarize", "volume_bin", "volume_ml"]
