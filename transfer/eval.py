"""``python -m transfer.eval experiment=NAME ckpt_path=PATH``: evaluate a checkpoint with the same configs."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from transfer import experiments
from transfer.runner import run

experiments.register()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    if not cfg.get("ckpt_path"):
        raise SystemExit("python -m transfer.eval needs ckpt_path=PATH (the checkpoint to evaluate); without it the "
                         "model would be scored at its initial weights")
    run(cfg)


if __name__ == "__main__":
    main()
