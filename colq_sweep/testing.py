"""Diagnostic task functions for the launcher (used by tests, handy on a new GPU node).

`python -m colq_sweep -m hydra/launcher=gpu-pool hydra.launcher.task=colq_sweep.testing.probe_task seqlen=1,2,3,4`
runs no model: each job records which devices it was given and when it ran, under <outputs_dir>/probe/.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig

PROBE_SECONDS = 1.5


def probe_task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    start = time.time()
    time.sleep(PROBE_SECONDS)
    out = Path(str(cfg.outputs_dir)) / "probe"
    out.mkdir(parents=True, exist_ok=True)
    num = HydraConfig.get().job.num
    record = {
        "job": num,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slot": os.environ.get("COLQ_SWEEP_SLOT"),
        "pid": os.getpid(),
        "start": start,
        "end": time.time(),
        "torch_imported": "torch" in __import__("sys").modules,
    }
    (out / f"job-{num}.json").write_text(json.dumps(record))
    from colq_sweep.sweep import STATUS_FILE, PointOutcome

    job_dir = Path(HydraConfig.get().runtime.output_dir)
    (job_dir / STATUS_FILE).write_text(PointOutcome("probe", "probe", "FINISHED").to_json())
