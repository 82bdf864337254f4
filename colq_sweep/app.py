"""The job behind `python -m colq_sweep`: validate the composed config, then run one sweep point."""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from colq_sweep.config import ConfigError, SweepPoint, validate

log = logging.getLogger("colq_sweep")


def validate_or_exit(cfg: DictConfig) -> SweepPoint:
    """One line on stderr and exit code 2 for a bad value: no traceback, nothing loaded."""
    try:
        return validate(cfg)
    except ConfigError as err:
        print(f"colq_sweep: {err}", file=sys.stderr)
        sys.exit(2)


def run_job(cfg: DictConfig) -> None:
    point = validate_or_exit(cfg)
    for notice in point.eval.notices:
        log.warning("notice: %s", notice)
    from colq_sweep.sweep import run_point_job

    run_point_job(point, cfg)
