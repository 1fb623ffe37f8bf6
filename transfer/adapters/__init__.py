"""Parameter-efficient adapters: LoRA-C, convLoRA, CP-LoRA and their DoRA variants, plain LoRA/DoRA.

    from transfer.adapters import inject, AdapterConfig, merge_all
    report = inject(model, AdapterConfig(kind="cp_lora", rank=8, target=r"decoder\\..*"))
    print(report)            # adapted modules and trainable-parameter counts
    merge_all(model)         # plain nn.Conv*/nn.Linear modules with the effective weights
"""

from .config import KINDS, PAPER_NAMES, AdapterConfig, resolve_kind
from .inject import InjectionReport, adapter_layers, inject, mark_trainable, merge_all
from .io import (adapter_state_dict, load_adapters, load_base_weights, read_adapter_meta,
                 save_adapters)
from .layer import SUPPORTED, AdapterLayer
from .moe import (MoELoRAConfig, MoELoRALinear, Router, inject_moe_lora, load_balancing_loss, router_z_loss,
                  routers_of)

__all__ = [
    "KINDS", "PAPER_NAMES", "SUPPORTED", "AdapterConfig", "AdapterLayer",
    "InjectionReport", "MoELoRAConfig", "MoELoRALinear", "Router", "adapter_layers", "inject_moe_lora",
    "load_balancing_loss", "load_base_weights", "router_z_loss", "routers_of", "adapter_state_dict", "inject", "load_adapters", "mark_trainable",
    "merge_all", "read_adapter_meta", "resolve_kind", "save_adapters",
]
