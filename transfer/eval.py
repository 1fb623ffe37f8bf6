"""``python -m transfer.eval experiment=NAME ckpt_path=PATH``: evaluate a checkpoint with the same configs."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from transfer.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
