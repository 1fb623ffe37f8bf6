"""``python -m transfer.train experiment=NAME [overrides]``: fit, select a checkpoint, evaluate, record.

The command line only: :mod:`transfer.runner` expands variants, sweeps and folds, :mod:`transfer.single_run` does
one run, :mod:`transfer.collect` builds the tables."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from transfer import experiments
from transfer.preflight import expected_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from transfer.runner import run  # after the preflight: a command that stops there returns in seconds

    with expected_errors():
        run(cfg)


def main() -> None:
    experiments.register()  # into Hydra's config store, before Hydra composes the command line
    _hydra_main()


if __name__ == "__main__":
    main()
