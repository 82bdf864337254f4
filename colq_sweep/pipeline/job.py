"""The Hydra job behind `python -m colq_sweep`: validate the composed config (one line, exit 2), resolve its plan,
run the point, and leave the status file that the end-of-sweep summary reads (track/multirun.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from colq_sweep.cli import preflight_or_exit, validate_or_exit
from colq_sweep.fsio import atomic_write_text
from colq_sweep.track.multirun import STATUS_FILE

log = logging.getLogger("colq_sweep")


def run_job(cfg: DictConfig):
    """Validate, plan, run the point, write its status file; a single (non-multirun) failed point exits 1."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from colq_sweep.console import setup_job

    point = validate_or_exit(cfg)
    setup_job()  # third-party loggers through Hydra's job logging (console filter + log file), loading bars off
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if not multirun:  # a multirun's jobs were checked by the sweeper before any started
        preflight_or_exit(point, list(hc.overrides.task))
    from colq_sweep.pipeline.plan import resolve  # after validation: a bad config costs no heavy import
    from colq_sweep.pipeline.point import run_point

    for notice in point.eval.notices:
        log.warning("notice: %s", notice)
    plan = resolve(point)
    job_dir = Path(hc.runtime.output_dir)
    sweep_id = None
    if multirun:
        from colq_sweep.track.store import sweep_id_for

        sweep_id = sweep_id_for(hc.sweep.dir)
    config_yaml = OmegaConf.to_yaml({k: cfg[k] for k in cfg if k != "hydra"}, resolve=True)
    who = f"#{hc.job.num} {point.model.name} {point.label}" if multirun else None
    outcome = run_point(plan, sweep_id=sweep_id, config_yaml=config_yaml, log_files=sorted(job_dir.glob("*.log")), who=who)
    atomic_write_text(job_dir / STATUS_FILE, outcome.to_json())
    if not multirun and outcome.status == "FAILED":
        print(f"colq_sweep: point FAILED: {outcome.error}", file=sys.stderr)
        sys.exit(1)
    return outcome
