"""Optimal transport between labelled embedding sets with a text-aware cost (POT, differentiable in the cost).

cost((x_i, y_i), (x_j, y_j)) = ||x_i - x_j||^2 + beta * ||t[y_i] - t[y_j]||^2, with t the class text embeddings:
a JDOT/OTDD-style label cost whose label distance comes from the text encoder.
"""

from __future__ import annotations

import ot
import torch


def text_aware_cost(x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor, text: torch.Tensor,
                    beta: float = 1.0) -> torch.Tensor:
    cost = torch.cdist(x1, x2).pow(2)
    if beta:
        cost = cost + beta * torch.cdist(text[y1], text[y2]).pow(2)
    return cost


def ot_plan(cost: torch.Tensor, solver: str = "emd", reg: float = 0.05, max_iter: int = 200) -> torch.Tensor:
    """The transport plan between uniform marginals (rows: first set, columns: second)."""
    a = torch.full((cost.shape[0],), 1.0 / cost.shape[0], dtype=cost.dtype, device=cost.device)
    b = torch.full((cost.shape[1],), 1.0 / cost.shape[1], dtype=cost.dtype, device=cost.device)
    if solver == "emd":
        return ot.emd(a, b, cost.detach())
    if solver == "sinkhorn":
        return ot.sinkhorn(a, b, cost.detach() / cost.detach().max().clamp_min(1e-12), reg, numItermax=max_iter)
    raise ValueError(f"OT solver must be emd or sinkhorn, got '{solver}'")


def ot_distance(cost: torch.Tensor, solver: str = "emd", reg: float = 0.05, max_iter: int = 200) -> torch.Tensor:
    """<plan, cost>: the plan is solved on the detached cost (envelope theorem), the gradient flows into the cost."""
    return (ot_plan(cost, solver, reg, max_iter) * cost).sum()
