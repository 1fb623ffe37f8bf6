"""Adapter cost, measured in one run and printed as ratios.

    python benchmarks/adapters.py [--size 64] [--rank 4] [--rounds 7] [--threads 2]

For a Conv3d 32->32 k3 on a size^3 input and for a small MONAI 3D UNet: the training-step time (forward +
backward) of each adapter kind relative to the frozen base model, relative to peft's LoRA at the same rank
(peft adapts only the Conv3d layers, so the UNet comparison adapts only those), and merged inference
relative to the plain model.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from transfer.adapters import AdapterConfig, inject, merge_all

KINDS = ["lora_c", "convlora", "cp_lora", "dora_c", "convdora", "cp_dora"]
#: (label, kind, forward_mode): the two forward paths of LoRA-C/DoRA-C are both timed
VARIANTS = [(k, k, "auto") for k in KINDS] + [("lora_c/branch", "lora_c", "branch"), ("dora_c/branch", "dora_c", "branch")]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def one_step(model: nn.Module, x: torch.Tensor, train: bool) -> float:
    _sync()
    t0 = time.perf_counter()
    if train:  # forward + backward to the trainable tensors and to the input (as inside a deeper network)
        model(x.detach().requires_grad_(True)).square().mean().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            model(x)
    _sync()
    return time.perf_counter() - t0


def interleaved(models: dict[str, tuple[nn.Module, bool]], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` seconds per model; every round times each model once, so slow drifts of the
    machine hit all models alike."""
    for model, train in models.values():  # warm-up
        one_step(model, x, train)
    best = {k: float("inf") for k in models}
    for _ in range(rounds):
        for k, (model, train) in models.items():
            best[k] = min(best[k], one_step(model, x, train))
    return best


def peft_model(model: nn.Module, targets: list[str], rank: int) -> nn.Module:
    import peft

    return peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(target_modules=targets, r=rank, lora_alpha=rank))


def frozen(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def bench(name: str, model: nn.Module, x: torch.Tensor, targets: list[str], rank: int, rounds: int) -> list[str]:
    models = {"base": (frozen(model), True), "plain_inference": (model, False), "peft": (peft_model(model, targets, rank), True)}
    counts = {}
    for label, kind, mode in VARIANTS:
        m = copy.deepcopy(model)
        inject(m, AdapterConfig(kind=kind, rank=rank, target=targets, forward_mode=mode))
        counts[label] = sum(p.numel() for p in m.parameters() if p.requires_grad)
        merged = merge_all(copy.deepcopy(m))  # plain modules, as exported for inference
        models[label], models[label + "/merged"] = (m, True), (merged, False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {k: (m.to(device), train) for k, (m, train) in models.items()}
    t = interleaved(models, x.to(device), rounds)
    rows = [f"\n{name}: frozen base step {t['base'] * 1e3:.1f} ms, peft LoRA r{rank} step {t['peft'] * 1e3:.1f} ms "
            f"({t['peft'] / t['base']:.2f}x base), plain inference {t['plain_inference'] * 1e3:.1f} ms",
            f"{'kind':<14} {'trainable':>10} {'step/base':>10} {'step/peft':>10} {'merged inf/plain':>17}"]
    for label, _, _ in VARIANTS:
        rows.append(f"{label:<14} {counts[label]:>10,} {t[label] / t['base']:>10.2f} {t[label] / t['peft']:>10.2f} "
                    f"{t[label + '/merged'] / t['plain_inference']:>17.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {args.threads} threads"
    print(f"torch {torch.__version__}, {where}, input {args.size}^3, rank {args.rank}, "
          f"best of {args.rounds} interleaved rounds")
    conv = nn.Sequential(nn.Conv3d(32, 32, 3, padding=1))
    lines = bench("Conv3d 32->32 k3", conv, torch.randn(1, 32, args.size, args.size, args.size), ["0"],
                  args.rank, args.rounds)
    from monai.networks.nets import UNet

    unet = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    conv3d = [n for n, m in unet.named_modules() if type(m) is nn.Conv3d]
    lines += bench(f"MONAI UNet (8,16,32), {len(conv3d)} Conv3d adapted", unet,
                   torch.randn(1, 1, args.size, args.size, args.size), conv3d, args.rank, args.rounds)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
