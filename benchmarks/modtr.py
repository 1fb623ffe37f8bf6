"""One training step of ModTr vs full fine-tuning of the same detector on the same batch.

    python benchmarks/modtr.py [--detector fcos] [--translator resnet34] [--size 256 320] [--batch 2]

Variants: ModTr without activation checkpointing, with the detector recomputed (stem, two bottlenecks per segment,
FPN, head), with the translator's encoder and decoder blocks recomputed too, and full fine-tuning. Each variant runs
in fresh subprocesses. Time = best of --rounds steps (forward, backward, AdamW step); memory = peak over the steps
minus the memory held before the first step (activations, gradients and optimizer state: what a step adds on top of
the models), from CUDA's allocator on a GPU. On a CPU it is the process's peak resident set, measured in a second
run with glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_), so that freed tensors go back to the
system at once and the peak follows the live tensors as CUDA's counter does (with glibc's default, the figure
depends on the allocation history and varies by +-10 % between identical runs); that run is slower, so time comes
from the first. Prints the ratios ModTr / full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one_variant(variant: str, args) -> dict:
    from transfer.methods.modtr import ModTrModule

    torch.manual_seed(0)
    translator = {"name": "identity"} if variant == "finetune_full" else {"name": "unet", "encoder": args.translator}
    ckpt = variant.split(":")[1] if ":" in variant else "none"
    module = ModTrModule(detector={"name": args.detector, "weights": "random", "num_classes": 91}, translator=translator,
                         train_detector="full" if variant == "finetune_full" else "none",
                         train_translator=variant.startswith("modtr"), activation_checkpointing=ckpt)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module.to(device)
    h, w = args.size
    ir = torch.rand(args.batch, 1, h, w, device=device)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 80.0, 120.0], [100.0, 60.0, 200.0, 140.0]], device=device),
                "labels": torch.tensor([1, 3], device=device)} for _ in range(args.batch)]
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mb()
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = sum(module.detector.losses(module.translator(ir), targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"variant": variant, "device": device, "step_s": min(times), "extra_mb": peak - before, "trainable": trainable}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default="fcos")
    ap.add_argument("--translator", default="resnet34")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 320])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="autocast bf16 (trainer.precision=bf16-mixed)")
    ap.add_argument("--variants", nargs="+", default=["modtr:none", "modtr:detector", "modtr:both", "finetune_full"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(one_variant(args.child, args)))
        return
    def child(variant: str, env: dict) -> dict:
        out = subprocess.run([sys.executable, __file__, "--child", variant, *sys.argv[1:]], capture_output=True,
                             text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"variant {variant} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    res = {}
    for variant in args.variants:
        res[variant] = child(variant, dict(os.environ))
        if res[variant]["device"] == "cpu":  # memory from a run whose freed tensors leave the resident set at once
            res[variant]["extra_mb"] = child(variant, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})["extra_mb"]
    any_run = next(iter(res.values()))
    print(f"{args.detector} + UNet-{args.translator}, batch {args.batch} x {args.size[0]}x{args.size[1]}, "
          f"{any_run['device']}, {args.threads} threads, best of {args.rounds} steps{', bf16 autocast' if args.bf16 else ''}")
    for r in res.values():
        print(f"{r['variant']:<16} trainable {r['trainable'] / 1e6:6.2f} M  step {r['step_s']:.3f} s  "
              f"step memory {r['extra_mb']:8.1f} MiB")
    if "finetune_full" not in res or "modtr:none" not in res:
        return
    f, plain = res["finetune_full"], res["modtr:none"]
    for name in [v for v in res if v.startswith("modtr:")]:
        m = res[name]
        print(f"{name:<16} / full FT: memory {m['extra_mb'] / f['extra_mb']:.2f}x (goal <= 0.6x), time "
              f"{m['step_s'] / f['step_s']:.2f}x; time / ModTr without checkpointing "
              f"{m['step_s'] / plain['step_s']:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
