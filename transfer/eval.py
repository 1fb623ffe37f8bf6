"""``python -m transfer.eval experiment=NAME ckpt_path=PATH``: evaluate a checkpoint with the same configs."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from transfer import experiments
from transfer.preflight import expected_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    from transfer.runner import run  # after the preflight: a command that stops there returns in seconds

    with expected_errors():
        run(cfg)


def main() -> None:
    experiments.register()  # into Hydra's config store, before Hydra composes the command line
    _hydra_main()


if __name__ == "__main__":
    main()
