"""Training-step time of MoE-LoRA (E=4, top-2) vs a single LoRA vs full fine-tuning on one batch.

    python benchmarks/moelora.py [--backbone base] [--seconds 1.0] [--batch 2] [--rounds 5] [--threads 2]

Best of ``rounds`` interleaved steps (forward, backward, Adam step) per variant; prints ratios
(goal: MoE <= 1.3x LoRA).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from transfer.methods.moelora import DeepfakeDetectionModule

VARIANTS = {
    "full": dict(mode="full"),
    "lora_r16": dict(mode="lora", lora_rank=16),
    "moe_e4_r8_top2": dict(mode="moe", moe={"num_experts": 4, "rank": 8, "top_k": 2}),
    "moe_e4_r4_dense": dict(mode="moe", moe={"num_experts": 4, "rank": 4, "top_k": None}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="base")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    wav = torch.randn(args.batch, int(16000 * args.seconds), device=device)
    label = torch.randint(0, 2, (args.batch,), device=device)
    models, opts = {}, {}
    for name, kw in VARIANTS.items():
        m = DeepfakeDetectionModule(backbone=args.backbone, weights="random", **kw).to(device).train()  # timing only
        models[name] = m
        opts[name] = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4)

    def step(name: str) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = F.cross_entropy(models[name](wav), label)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for name in models:
        step(name)
    best = {n: float("inf") for n in models}
    for _ in range(args.rounds):
        for name in models:
            best[name] = min(best[name], step(name))
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {args.threads} threads"
    print(f"wav2vec2 {args.backbone}, batch {args.batch} x {args.seconds} s, {where}, best of {args.rounds}")
    for name, m in models.items():
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        print(f"{name:<16} trainable {trainable / 1e6:7.3f} M  step {best[name] * 1e3:8.1f} ms  "
              f"{best[name] / best['lora_r16']:.2f}x LoRA  {best[name] / best['full']:.2f}x full FT")


if __name__ == "__main__":
    main()
