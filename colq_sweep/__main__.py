"""`python -m colq_sweep [-m] key=value ...`: one sweep point per job (see README)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import colq_sweep.config  # noqa: F401  (registers the colq_entries resolver before Hydra composes)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from colq_sweep.pipeline.job import run_job

    run_job(cfg)


def entry() -> None:
    """`python -m colq_sweep` and the `colq-sweep` script: the overrides checked before Hydra composes."""
    import sys

    from colq_sweep.cli import check_overrides_or_exit
    from colq_sweep.console import take_verbose_flag

    sys.argv = take_verbose_flag(sys.argv)  # -v: third-party logs and loading bars on the console too
    check_overrides_or_exit()
    main()


if __name__ == "__main__":
    entry()
