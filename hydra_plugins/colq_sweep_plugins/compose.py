"""One job's config, composed the same way by the sweeper (to validate it) and the pool launcher (to run it)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.types import HydraContext
from omegaconf import DictConfig, open_dict


def compose_job(
    hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str], idx: int, sweep_dir: str | None = None
) -> DictConfig:
    """The config of job `idx`; `sweep_dir` pins the sweep directory (a child must not re-evaluate `${colq_stamp:}`)."""
    cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = idx
        cfg.hydra.job.num = idx
        if sweep_dir is not None:
            cfg.hydra.sweep.dir = sweep_dir
    return cfg
