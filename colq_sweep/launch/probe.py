"""Diagnostic task functions for the launcher (used by tests, handy on a new GPU node).

`python -m colq_sweep -m hydra/launcher=gpu-pool hydra.launcher.task=colq_sweep.launch.probe.probe_task seed=1,2,3,4`
loads no model: each job records which devices it was given (and, if torch is installed, which GPUs it can
see) and when it ran, under <outputs_dir>/probe/. It imports nothing heavy, so it also runs on a bare node.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

PROBE_SECONDS = float(os.environ.get("COLQ_PROBE_SECONDS", "1.5"))  # tests stretch it to kill a job mid-run


def _visible_gpus() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [f"{torch.cuda.get_device_name(i)} {torch.cuda.get_device_properties(i).uuid}" for i in range(torch.cuda.device_count())]


def probe_task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    start = time.time()
    torch_was_imported = "torch" in sys.modules  # before this job chose its devices? (must be False)
    time.sleep(PROBE_SECONDS)
    hc = HydraConfig.get()
    record = {
        "job": hc.job.num,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slot": os.environ.get("COLQ_SWEEP_SLOT"),
        "pid": os.getpid(),
        "start": start,
        "end": time.time(),
        "torch_imported": torch_was_imported,
        "gpus": _visible_gpus(),
    }
    out = Path(str(cfg.outputs_dir)) / "probe"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"job-{hc.job.num}.json").write_text(json.dumps(record))
    status = {"label": "probe", "model": "probe", "status": "FINISHED", "run_id": None, "metrics": {}, "error": None}
    (Path(hc.runtime.output_dir) / "colq_status.json").write_text(json.dumps(status))
