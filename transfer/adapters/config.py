"""Adapter configuration and the paper-name -> parameterisation mapping (kept in one place)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

#: neutral parameterisations: low rank on the out x (in*k^d) unfolding of the kernel (LoRA-C, Ding et al., arXiv
#: 2410.16954), on loralib's (out*k^(d-1)) x (in*k) reshape (ConvLoRA, microsoft/LoRA loralib), and a CP
#: decomposition of the kernel (CP-LoRA, the SAH LoRA-Unet study, arXiv 2508.01772); DoRA (Liu et al., ICML 2024)
#: on top of each
KINDS = ("unfold_lora", "reshape_lora", "cp_lora")

#: paper name -> (kind, dora). LoRA-C = low rank on the out x (in*k^d) unfolding and convLoRA = the loralib
#: (out*k^(d-1)) x (in*k) reshape is an inference from the papers; flip it here if the SAH paper says otherwise.
PAPER_NAMES: dict[str, tuple[str, bool]] = {
    "lora_c": ("unfold_lora", False),
    "convlora": ("reshape_lora", False),
    "cp_lora": ("cp_lora", False),
    "dora_c": ("unfold_lora", True),
    "convdora": ("reshape_lora", True),
    "cp_dora": ("cp_lora", True),
    "lora": ("unfold_lora", False),  # plain LoRA (linear layers)
    "dora": ("unfold_lora", True),
}


def resolve_kind(kind: str, dora: bool = False) -> tuple[str, bool]:
    """Map a paper name or a neutral kind to ``(kind, dora)``."""
    if kind in KINDS:
        return kind, dora
    if kind in PAPER_NAMES:
        base, paper_dora = PAPER_NAMES[kind]
        return base, paper_dora or dora
    raise ValueError(f"unknown adapter kind '{kind}'; use one of {', '.join([*PAPER_NAMES, *KINDS])}")


@dataclass
class AdapterConfig:
    """What to adapt and how.

    ``target`` is a regex matched in full against module names (``"encoder\\..*conv"``), or a list whose
    entries are module-group names (``model.adapter_groups``) or module-name suffixes (``"q_proj"``).
    """

    kind: str = "lora_c"
    rank: int = 4
    alpha: float | None = None  # default: alpha = rank, i.e. scaling 1 (LoRA-C keeps alpha/r constant)
    dora: bool = False
    dora_axis: str = "out"  # DoRA magnitude per output channel (peft) or per input channel (LyCORIS)
    target: str | Sequence[str] = ".*"
    train_norms: bool = False  # also train norm layers (affine) of the model
    modules_to_save: Sequence[str] = field(default_factory=list)  # regexes of extra trainable modules (heads)
    forward_mode: str = "auto"  # auto (= materialize) | materialize | branch (unfold_lora only)
    eps: float = 1e-6  # clamp of the DoRA weight norm

    def __post_init__(self) -> None:
        self.kind, self.dora = resolve_kind(self.kind, self.dora)
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if self.dora_axis not in ("out", "in"):
            raise ValueError(f"dora_axis must be 'out' or 'in', got {self.dora_axis!r}")
        if self.forward_mode not in ("auto", "materialize", "branch"):
            raise ValueError(f"forward_mode must be auto, materialize or branch, got {self.forward_mode!r}")
        if self.alpha is None:
            self.alpha = float(self.rank)
        if not isinstance(self.target, str):
            self.target = list(self.target)
        self.modules_to_save = list(self.modules_to_save)

    def to_dict(self) -> dict:
        return asdict(self)
