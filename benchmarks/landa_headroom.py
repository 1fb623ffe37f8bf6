"""How much the LanDA toy leaves to gain over zero-shot, measured with the target labels (a diagnostic, not a method).

    python benchmarks/landa_headroom.py [--points N] [--cache-dir DIR]

For each sweep point of ``experiments/landa_toy.yaml`` (its own tiny-CLIP pre-training seed; the pre-trained CLIP
and the embeddings come from the toy's cache, or are built once), the target test embeddings are split in two
halves: the first estimates target statistics, the second is scored. Printed, mean +- std over points: zero-shot,
a linear probe on the sources (LP), and LP on the sources plus copies of them moved

- by the text shift t_T[y] - t_k[y] (the direction LADS/LanDA's augmenters are trained towards),
- by the true domain shift (target mean - source mean: any class-agnostic translation does at most about this),
- by the true per-class shift (target class mean - source class mean: a perfect augmenter),

and a probe trained on the first target half (the oracle). LanDA gains over zero-shot only where an augmenter gets
closer to the per-class shift than the text tells it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from transfer import experiments
from transfer.methods.landa.module import templates
from transfer.optim import plain_specs

COLUMNS = ["zero-shot", "LP", "LP+text shift", "LP+domain shift", "LP+class shift", "oracle"]


def probe(z: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 400) -> torch.nn.Linear:
    torch.manual_seed(0)
    head = torch.nn.Linear(z.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), 5e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(z), y).backward()
        opt.step()
    return head


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


def compose_point(point: int, cache_dir: str | None, run_dir: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="transfer.conf", version_base="1.3"):
        overrides = ["experiment=landa_toy"] + ([f"paths.cache_dir={cache_dir}"] if cache_dir else [])
        cfg = compose("train", overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = run_dir
        cfg.hydra.job.num = 0
        cfg.model.clip_pretrain.seed = int(cfg.sweep["model.clip_pretrain.seed"][point])
    HydraConfig.instance().set_config(cfg)
    return cfg


def measure(cfg) -> list[float]:
    data = instantiate(cfg.data, _convert_="all")
    model = instantiate(plain_specs(cfg.model), _convert_="all")
    model.prepare(data)
    data.setup("fit")
    data.setup("test")
    enc, classes, c = data.encoder, data.classes, data.num_classes
    text_t = enc.class_text(templates(cfg.model.target_prompt), classes)
    target = next(iter(data.targets))
    zt, yt = data.split(f"{target}/test").tensors[:2]
    perm = torch.randperm(len(zt), generator=torch.Generator().manual_seed(0))
    a, b = perm[: len(zt) // 2], perm[len(zt) // 2:]
    za, ya, zb, yb = zt[a], yt[a], zt[b], yt[b]
    z, y, text_shift, domain_shift, class_shift = [], [], [], [], []
    for s in data.sources:
        zs, ys = data.split(f"{s}/train").tensors[:2]
        text_s = enc.class_text(templates(cfg.model.source_prompts[s]), classes)
        per_class = torch.stack([za[ya == k].mean(0) - zs[ys == k].mean(0) for k in range(c)])
        z.append(zs)
        y.append(ys)
        text_shift.append((text_t - text_s)[ys])
        domain_shift.append((za.mean(0) - zs.mean(0)).expand_as(zs))
        class_shift.append(per_class[ys])
    z, y = torch.cat(z), torch.cat(y)
    row = [accuracy(zb @ text_t.T, yb), accuracy(probe(z, y, c)(zb), yb)]
    for shift in (text_shift, domain_shift, class_shift):
        moved = F.normalize(z + torch.cat(shift), dim=-1)
        row.append(accuracy(probe(torch.cat([z, moved]), torch.cat([y, y]), c)(zb), yb))
    row.append(accuracy(probe(za, ya, c)(zb), yb))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=None,
                        help="the first N sweep points of landa_toy (pre-training seeds); default: all")
    parser.add_argument("--cache-dir", help="the toy's cache (pre-trained CLIPs, embeddings); default: paths.cache_dir")
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiments.register()
    rows = []
    with tempfile.TemporaryDirectory() as run_dir:
        points = args.points or len(compose_point(0, args.cache_dir, run_dir).sweep["model.clip_pretrain.seed"])
        for point in range(points):
            cfg = compose_point(point, args.cache_dir, run_dir)
            rows.append(measure(cfg))
            print(f"point {point} (clip seed {cfg.model.clip_pretrain.seed}): "
                  + ", ".join(f"{n} {v:.1f}" for n, v in zip(COLUMNS, rows[-1])), flush=True)
    print("\ntarget accuracy on the scored half, mean +- std over points")
    for i, name in enumerate(COLUMNS):
        col = [r[i] for r in rows]
        spread = statistics.stdev(col) if len(col) > 1 else 0.0
        print(f"  {name:16s} {statistics.mean(col):5.1f} +- {spread:4.1f}")


if __name__ == "__main__":
    main()
