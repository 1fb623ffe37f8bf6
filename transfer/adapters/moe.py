"""Mixture of LoRA experts (MoE-LoRA) for linear projections, with a router per block.

For a frozen projection W and experts (A_e, B_e), e = 1..E (B_e zero at init):

    y_t = W x_t + (alpha / r) * sum_e g_{t,e} * B_e A_e x_t

g = softmax(router(h)) over experts, restricted to the top-k and renormalised (k = None: dense). One router
per block may be shared by several projections (q, k, v, out of an attention block): it reads the block's
input h — per token, or the time-mean per utterance — and the projections read its gates. The router
starts at zero (uniform gates). Not mergeable: the update depends on the input.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MoELoRAConfig:
    num_experts: int = 4
    rank: int = 8
    alpha: float | None = None  # default: alpha = rank
    top_k: int | None = None  # None or num_experts: dense soft mixture
    routing: str = "token"  # token | utterance
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    router_shared: bool = True  # one router per block for all its targets; False: one per projection

    def __post_init__(self) -> None:
        if self.num_experts < 1 or self.rank < 1:
            raise ValueError(f"num_experts and rank must be >= 1, got {self.num_experts}, {self.rank}")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..{self.num_experts} or None, got {self.top_k}")
        if self.routing not in ("token", "utterance"):
            raise ValueError(f"routing must be token or utterance, got '{self.routing}'")
        if self.alpha is None:
            self.alpha = float(self.rank)

    def to_dict(self) -> dict:
        return asdict(self)


class Router(nn.Module):
    """Gates [..., E] from hidden states [B, T, d] (token) or their time-mean (utterance)."""

    def __init__(self, d_model: int, num_experts: int, top_k: int | None = None, routing: str = "token"):
        super().__init__()
        self.proj = nn.Linear(d_model, num_experts)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.num_experts, self.top_k, self.routing = num_experts, top_k, routing
        self.gates: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.register_buffer("usage", torch.zeros(num_experts), persistent=False)  # gate mass, for analysis

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.routing == "utterance":
            logits = self.proj(h.mean(dim=-2, keepdim=True)).expand(*h.shape[:-1], self.num_experts)
        else:
            logits = self.proj(h)
        probs = logits.softmax(-1)
        gates = probs
        if self.top_k is not None and self.top_k < self.num_experts:
            top = probs.topk(self.top_k, dim=-1).indices
            mask = torch.zeros_like(probs).scatter_(-1, top, 1.0)
            gates = probs * mask
            gates = gates / gates.sum(-1, keepdim=True)
        self.logits, self.gates = logits, gates
        if not self.training:  # gate mass per expert (with uniform gates every expert gets the same share)
            self.usage += gates.detach().reshape(-1, self.num_experts).sum(0).to(self.usage)
        return gates


class MoELoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus E LoRA experts mixed by a router's gates."""

    def __init__(self, base: nn.Linear, router: Router, config: MoELoRAConfig, own_router: bool = False):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"MoE-LoRA wraps nn.Linear, got {type(base).__name__}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        E, r = config.num_experts, config.rank
        self.lora_A = nn.Parameter(torch.empty(E, r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(E, base.out_features, r))
        for e in range(E):
            nn.init.kaiming_uniform_(self.lora_A[e], a=math.sqrt(5))
        self.scaling = config.alpha / r
        # a shared router belongs to the block (registered there); an own router is this module's child
        self.router = router if own_router else None
        self._shared = None if own_router else [router]  # a list keeps it out of this module's children

    def get_router(self) -> Router:
        return self.router if self.router is not None else self._shared[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        router = self.get_router()
        gates = router(x) if self.router is not None else router.gates
        if gates is None or gates.shape[:-1] != x.shape[:-1]:
            raise RuntimeError("the shared router has no gates for this input: is its block hook registered?")
        h = torch.einsum("...i,eri->...er", x, self.lora_A)
        delta = torch.einsum("...er,eor,...e->...o", h, self.lora_B, gates)
        return self.base(x) + self.scaling * delta


def inject_moe_lora(model: nn.Module, config: MoELoRAConfig) -> dict[str, Router]:
    """Wrap the ``config.targets`` linears of every block holding them; returns the routers by block name.

    A shared router is a child ``moe_router`` of the block and computes its gates in a forward pre-hook
    from the block's first input (the hidden states entering attention)."""
    names = {n: m for n, m in model.named_modules()}
    blocks = sorted({n.rpartition(".")[0] for n, m in names.items() if isinstance(m, nn.Linear)
                     and any(re.fullmatch(t, n.rpartition(".")[2]) for t in config.targets)})
    if not blocks:
        close = sorted({n.rpartition(".")[2] for n, m in names.items() if isinstance(m, nn.Linear)})[:8]
        raise ValueError(f"no nn.Linear named {config.targets}; linear names in this model: {close}")
    routers = {}
    for block_name in blocks:
        block = model.get_submodule(block_name) if block_name else model
        targets = [(n, m) for n, m in block.named_children() if isinstance(m, nn.Linear)
                   and any(re.fullmatch(t, n) for t in config.targets)]
        if config.router_shared:
            router = Router(targets[0][1].in_features, config.num_experts, config.top_k, config.routing)
            block.moe_router = router
            block.register_forward_pre_hook(_route_block_input)
            routers[block_name] = router
        for n, lin in targets:
            if config.router_shared:
                setattr(block, n, MoELoRALinear(lin, block.moe_router, config))
            else:
                own = Router(lin.in_features, config.num_experts, config.top_k, config.routing)
                setattr(block, n, MoELoRALinear(lin, own, config, own_router=True))
                routers[f"{block_name}.{n}"] = own
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, (MoELoRALinear, Router)):
            for n, p in m.named_parameters():
                if not n.startswith("base."):
                    p.requires_grad_(True)
    return routers


def _route_block_input(block: nn.Module, args: tuple) -> None:
    block.moe_router(args[0])


def routers_of(model: nn.Module) -> list[Router]:
    return [m for m in model.modules() if isinstance(m, Router)]


def load_balancing_loss(routers: list[Router]) -> torch.Tensor:
    """Switch-Transformer balance loss E * sum_e f_e * P_e, averaged over routers (layers).

    f_e: share of tokens whose highest gate probability is expert e; P_e: mean router probability of e."""
    losses = []
    for r in routers:
        if r.logits is None:
            continue
        probs = r.logits.softmax(-1).reshape(-1, r.num_experts)
        f = F.one_hot(probs.argmax(-1), r.num_experts).float().mean(0)
        losses.append(r.num_experts * (f * probs.mean(0)).sum())
    if not losses:
        raise RuntimeError("no router has run yet")
    return torch.stack(losses).mean()


def router_z_loss(routers: list[Router]) -> torch.Tensor:
    """Mean squared log-sum-exp of the router logits (ST-MoE), averaged over routers."""
    return torch.stack([torch.logsumexp(r.logits, -1).square().mean() for r in routers if r.logits is not None]).mean()
