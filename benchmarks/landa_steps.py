"""LanDA's full-batch training with ``model.steps_per_batch=20`` (20 optimizer steps per Lightning step, what the
toy ships) against one step per Lightning step, on one sweep point of the toy: seconds per variant, their ratio, and
the target accuracy each way.

    python benchmarks/landa_steps.py [--point 0] [--cache-dir DIR]

Both ways make the same optimizer steps on the same full batch (700 for LADS/LanDA, 400 for LP), validate every 20
steps and keep the best source-validation checkpoint; only the order of rows inside the batch differs (reshuffled
each pass with one step per epoch), and ``landa_ot`` draws its OT subsamples from another random stream. The
tiny CLIP is pre-trained (or read from the cache) before the timed runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from transfer import experiments, runner

VARIANTS = {  # name: (overrides, epochs of one step)
    "lp": (["model.method=lp", "model.aug_epochs=0"], 400),
    "lads": (["model.method=lads"], 700),
    "landa": (["model.method=landa", "model.lambda_w=0"], 700),
    "landa_ot": (["model.method=landa"], 700),
}


def run(overrides: list[str], run_dir: Path) -> tuple[float, float]:
    experiments.register()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="transfer.conf", version_base="1.3"):
        cfg = compose("train", ["experiment=landa_toy", "callbacks=plain", "logger=csv", "sweep=null", "variants=null",
                                *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own tables
        rows = runner.run(cfg)
    seconds = time.perf_counter() - start
    acc = next(r["metrics"]["acc"] for r in rows if r["split"] == "test" and r["target"] == "infrared")
    return seconds, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--point", type=int, default=0, help="sweep point: seed P, tiny-CLIP pre-training seed 1000 + P")
    ap.add_argument("--cache-dir", default=None, help="the toy's cache (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # the Trainers' own notes
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or str(Path(tmp) / "cache")
        point = [f"seed={args.point}", f"model.clip_pretrain.seed={1000 + args.point}", f"paths.cache_dir={cache}"]
        run([*point, *VARIANTS["lp"][0]], Path(tmp) / "warm-up")  # pre-training and embeddings, cached
        print(f"{'variant':10s} {'1 step/epoch':>13s} {'20 steps/epoch':>15s} {'ratio':>6s}   target acc (1 / 20)")
        total = [0.0, 0.0]
        for name, (overrides, epochs) in VARIANTS.items():
            aug = 0 if "model.aug_epochs=0" in overrides else 300
            one = run([*point, *overrides, "model.steps_per_batch=1", f"model.aug_epochs={aug}",
                       f"trainer.max_epochs={epochs}", "trainer.check_val_every_n_epoch=20"], Path(tmp) / f"{name}-1")
            many = run([*point, *overrides, "model.steps_per_batch=20", f"model.aug_epochs={aug // 20}",
                        f"trainer.max_epochs={epochs // 20}", "trainer.check_val_every_n_epoch=1"],
                       Path(tmp) / f"{name}-20")
            total[0], total[1] = total[0] + one[0], total[1] + many[0]
            print(f"{name:10s} {one[0]:12.1f}s {many[0]:14.1f}s {many[0] / one[0]:6.2f}   {one[1]:.4f} / {many[1]:.4f}")
        print(f"{'all':10s} {total[0]:12.1f}s {total[1]:14.1f}s {total[1] / total[0]:6.2f}")


if __name__ == "__main__":
    main()
