"""One build of a quantized artifact, whatever the method: the method's run (quantize/methods/<name>/build.py), its
export made a self-contained Tomoro-layout checkpoint (export.py), and the manifest that describes it.

    run the method -> MethodRun (export folder, timing, memory, the arguments it was called with)
    collect        -> its files into the artifact folder, post-processed and checked
    describe       -> manifest.json (inputs, calibration, versions, memory, files with sha256)
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colq_sweep.keys import ARTIFACT_SCHEMA, key_versions
from colq_sweep.quantize import methods
from colq_sweep.quantize.artifacts import file_table, write_manifest
from colq_sweep.quantize.calibration import CalibrationData
from colq_sweep.quantize.export import postprocess_export
from colq_sweep.quantize.methods import MethodRun
from colq_sweep.runtime import dist_version

if TYPE_CHECKING:
    from colq_sweep.pipeline.plan import QuantJob


def build(job: QuantJob, base_dir: Path, processor, calib: CalibrationData | None, tmp: Path, started: float) -> dict:
    """Quantize `base_dir` into `tmp` with the job's method on the prepared calibration `calib`; return the manifest
    written there (`started`: when the stage began preparing, for the manifest's build_seconds)."""
    run = methods.builder(job.spec.method)(job, base_dir, processor, calib, tmp)
    export_info = _collect(run, tmp, base_dir)
    manifest = _manifest(job, base_dir, run, calib, export_info, file_table(tmp), time.perf_counter() - started)
    write_manifest(tmp, manifest)
    return manifest


def _collect(run: MethodRun, tmp: Path, base_dir: Path) -> dict[str, Any]:
    """The method's export moved into the artifact folder and made a Tomoro-layout checkpoint."""
    import torch

    for f in run.export_dir.iterdir():
        shutil.move(str(f), tmp / f.name)
    subfolder = run.export_dir.name
    for d in run.scratch:
        shutil.rmtree(d, ignore_errors=True)
    info = postprocess_export(tmp, base_dir, run.expected_layers, run.kept_modules, run.layer_overrides)
    info["autoround_subfolder"] = subfolder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info


def _manifest(
    job: QuantJob, base_dir: Path, run: MethodRun, calib: CalibrationData | None, export_info: dict, files: dict,
    build_seconds: float,
) -> dict:  # fmt: skip
    import torch

    mem = run.memory
    return {
        "schema": ARTIFACT_SCHEMA,
        "key": job.artifact_key,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # flat numbers, for trackers
        "samples_used": calib.used if calib else 0,
        "samples_requested": job.spec.nsamples if calib else 0,
        "quant_seconds": run.quant_seconds,
        "build_seconds": build_seconds,
        "quant_peak_rss_mb": mem.peak_rss / 2**20 if mem.peak_rss is not None else None,
        "quant_peak_cuda_mb": mem.peak_cuda / 2**20 if mem.peak_cuda is not None else None,
        "inputs": {
            "model_identity": job.checkpoint.identity,
            "model_name": job.checkpoint.name,
            "base_checkpoint": str(base_dir),
            "quant_knobs": job.knobs,
            "calib_identity": job.calib.identity if calib else None,
            "calib_revision": calib.revision if calib else None,
            "device": job.device,
            # the SIMD level torch dispatched to: float32 tuning can round single weights differently across levels
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "quant_load_dtype": run.load_dtype,
            "format": job.spec.format,
            "autoround_kwargs": run.arguments,
        },
        "calibration": {**(calib.summary() if calib else {"samples_used": 0}), **run.calibration},
        "autoround_warnings": run.warnings,
        "versions": {
            **key_versions(),
            "torch_full": torch.__version__,
            "auto_round_lib": dist_version("auto-round-lib"),
            "python": sys.version.split()[0],
        },
        "memory": {"peak_rss_bytes": mem.peak_rss, "peak_rss_method": mem.method, "peak_cuda_allocated_bytes": mem.peak_cuda},
        "export": export_info,
        "files": files,
    }
