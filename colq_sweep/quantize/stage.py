"""The quantize stage: reuse the complete artifact of the job's key, or calibrate then build it, under the key's
lock. A plain function of the plan's `QuantJob` (tests call it without Hydra)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from colq_sweep.fsio import fsync_dir, remove
from colq_sweep.quantize import calibration, pages
from colq_sweep.quantize.artifacts import (
    CALIB_FILE,
    PAGES_FILE,
    QuantArtifact,
    clean_incomplete,
    clean_key,
    key_lock,
    read_manifest,
    stamp_path,
    verify_artifact,
    write_stamp,
)
from colq_sweep.quantize.build import build

if TYPE_CHECKING:
    from colq_sweep.pipeline.plan import QuantJob

log = logging.getLogger(__name__)


def quantize(job: QuantJob) -> QuantArtifact:
    """Build the job's artifact, or reuse the complete one with the same key."""
    if job.problem is not None:  # the calibration set could not be pinned (pipeline/plan.py)
        raise job.problem
    models_dir = job.models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    clean_incomplete(models_dir)  # leftovers of killed builds (live builds of other processes are locked)
    base_dir = job.checkpoint.dir()
    key = job.artifact_key
    final = models_dir / key
    with key_lock(models_dir, key):
        clean_key(models_dir, key)
        if final.exists() and job.force:
            log.info("force=true: rebuilding artifact %s", final)
            remove(final)
        if final.exists():
            ok, why = verify_artifact(final, check_hashes=True)  # never reused unverified
            if ok:
                log.info("reusing quantized artifact %s (%s; content verified)", final, job.label)
                return QuantArtifact(key=key, path=final, manifest=read_manifest(final) or {}, reused=True)
            log.warning("artifact %s failed verification (%s): removing and rebuilding", final, why)
            remove(final)
            stamp_path(final).unlink(missing_ok=True)
        tmp = models_dir / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = _calibrate_and_build(job, base_dir, tmp)
            os.rename(tmp, final)
            fsync_dir(models_dir)
            write_stamp(final)  # the manifest's hashes were just computed from these very files
        except BaseException:
            remove(tmp)
            raise
    log.info("quantized artifact ready: %s (%.1f s)", final, manifest["quant_seconds"])
    return QuantArtifact(key=key, path=final, manifest=manifest, reused=False)


def _calibrate_and_build(job: QuantJob, base_dir: Path, tmp: Path) -> dict:
    """Calibration first (a shortfall fails in seconds, before any model is loaded), then one run of the method;
    a method that reads no calibration data (plain RTN) gets none."""
    from colq_sweep.model import ColQwen3Processor

    started = time.perf_counter()
    processor = ColQwen3Processor.from_checkpoint(base_dir, job.checkpoint.max_visual_tokens)
    q = job.spec
    if not q.needs_calibration:
        return build(job, base_dir, processor, None, tmp, started=started)
    if job.calib.has_images:
        calib = pages.prepare(
            job.calib, processor, seqlen=q.seqlen, nsamples=q.nsamples, seed=job.seed,
            max_visual_tokens=job.checkpoint.max_visual_tokens, allow_fewer=q.allow_fewer_samples,
            revision=job.calib_revision,
        )  # fmt: skip
        calib.write(tmp / PAGES_FILE)  # the artifact records every sample it was calibrated on
        return build(job, base_dir, processor, calib, tmp, started=started)
    with _calibration_file(tmp) as calib_path:
        calib = calibration.prepare(
            job.calib, processor.tokenizer, seqlen=q.seqlen, nsamples=q.nsamples, seed=job.seed, out_path=calib_path,
            allow_fewer=q.allow_fewer_samples, revision=job.calib_revision, batch_size=q.batch_size,
        )  # fmt: skip
        if calib.path != tmp / CALIB_FILE:  # the artifact keeps the exact file auto-round read
            shutil.copyfile(calib.path, tmp / CALIB_FILE)
        return build(job, base_dir, processor, calib, tmp, started=started)


@contextlib.contextmanager
def _calibration_file(tmp: Path) -> Iterator[Path]:
    """Where auto-round reads the calibration .jsonl: inside the artifact, unless that path holds characters
    auto-round's dataset argument cannot take (then a scratch folder, removed afterwards)."""
    if calibration.safe_for_autoround(tmp / CALIB_FILE):
        yield tmp / CALIB_FILE
        return
    scratch = Path(tempfile.mkdtemp(prefix="colq_calib_"))
    try:
        yield scratch / CALIB_FILE
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
