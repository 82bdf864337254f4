"""A validated point resolved once into what its stages need, as plain values: every key, revision, path and derived
setting is computed here, before any work, and the stages receive them (they never call back into keys.py).

    resolve(point) -> PointPlan
        .run_key, .eval_hash                       what the point is found by in MLflow
        .checkpoint                                the 16-bit checkpoint: source, fingerprint, mteb identity
        .quant: QuantJob | None                    the quantize stage's inputs (artifact key, calibration pin, ...)
        .eval: EvalJob                             the evaluate stage's inputs (mteb name and revision, kernels, ...)
        .baseline: PointPlan | None                the model's original, what a quantized point is compared with

Two things can only be found out on this machine and may fail: the calibration set's pin (a Hub branch offline
with no cached ref) and the kernels that can load a quantized export here. Neither is fatal at planning: the run is
keyed on what is known and the error (`problem`) is raised by the stage that needs the value, inside the point's
run, which then ends FAILED with it, as it would without a plan.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from colq_sweep import contract as R
from colq_sweep import keys
from colq_sweep.config import CalibSpec, EvalSpec, QuantizedSpec, SweepPoint, baseline_of
from colq_sweep.quantize import kernels
from colq_sweep.quantize import pages as page_calib
from colq_sweep.quantize.errors import BackendUnavailableError, CalibrationError
from colq_sweep.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dirs:
    outputs: Path

    @property
    def models(self) -> Path:
        return self.outputs / "models"

    @property
    def results(self) -> Path:
        return self.outputs / "results"

    @property
    def cache(self) -> Path:
        return self.outputs / "cache"

    @property
    def locks(self) -> Path:
        return self.outputs / "locks"


@dataclass(frozen=True)
class Checkpoint:
    """The 16-bit checkpoint a point starts from."""

    name: str  # model.name
    source: str  # a local directory or a Hub id
    revision: str | None
    dtype: str
    max_visual_tokens: int
    identity: str  # Hub id@revision, or `local`
    fingerprint: str  # keys.checkpoint_fingerprint: id@revision or the local files' sha256
    mteb_name: str  # the original's mteb model name (colq_sweep/<name>)
    mteb_revision: str  # the original's mteb revision (the Hub revision, or the content hash of a local dir)

    def dir(self) -> Path:
        """The checkpoint on disk (a Hub model is downloaded, or read from the cache): called by the stages that
        load it, never at planning."""
        from colq_sweep.model import resolve_checkpoint_dir

        return resolve_checkpoint_dir(self.source, self.revision)


@dataclass(frozen=True)
class QuantJob:
    """The quantize stage's inputs."""

    spec: QuantizedSpec
    seed: int
    calib: CalibSpec
    calib_revision: str | None  # the calibration set's pin (None: none is read, or it could not be resolved: `problem`)
    calib_semantics: str | None  # which auto-round loader's selection the rows replay (None: no calibration)
    artifact_key: str | None
    knobs: dict  # keys.quant_knobs: what the manifest records as the weights' inputs
    checkpoint: Checkpoint
    device: str
    force: bool
    models_dir: Path
    label: str
    problem: CalibrationError | None = None


@dataclass(frozen=True)
class EvalJob:
    """The evaluate stage's inputs."""

    spec: EvalSpec
    model_name: str  # mteb model name: the original's, or the original's plus the method's suffix
    revision: str | None  # keys.eval_revision (None for a quantized point whose artifact key is unknown)
    backend: str | None  # load-back kernels of a quantized checkpoint (quant.backend, resolved here)
    compute_dtype: str | None  # what they compute in
    results_dir: Path
    cache_dir: Path
    device: str
    force: bool
    problem: BackendUnavailableError | None = None
    page_revision: str | None = None  # keys.page_revision: what keys the page cache (None: `revision`)
    pixels: str = "pil"  # eval.preprocess_device resolved for `device`: pil | cpu | cuda


@dataclass(frozen=True)
class PointPlan:
    point: SweepPoint
    device: str
    role: str  # contract.ROLE_BASELINE | ROLE_QUANTIZED
    run_key: str
    eval_hash: str
    run_name: str
    dirs: Dirs
    checkpoint: Checkpoint
    eval: EvalJob
    quant: QuantJob | None = None
    baseline: PointPlan | None = None  # None for a baseline itself

    @property
    def label(self) -> str:
        return self.point.label

    @property
    def model(self) -> str:
        return self.point.model.name


def _checkpoint(point: SweepPoint) -> Checkpoint:
    m = point.model
    name, revision = keys.checkpoint_identity(point)
    return Checkpoint(m.name, m.source, m.revision, m.dtype, m.max_num_visual_tokens, m.identity,
                      keys.checkpoint_fingerprint(m.id, m.revision, m.path), name, revision)  # fmt: skip


def _calibration_pin(point: SweepPoint) -> tuple[str | None, CalibrationError | None]:
    try:
        return page_calib.pin(point.calib), None
    except CalibrationError as err:  # offline with an unpinned Hub ref: the run is keyed on the spec instead
        log.warning("calibration revision not resolvable (%s); keying the run on %s", err, point.calib.identity)
        return None, err


def _kernels(point: SweepPoint, device: str) -> tuple[str | None, str | None, BackendUnavailableError | None]:
    q = point.quant
    try:
        backend = kernels.resolve_backend(q.backend, device, q.bits)
    except BackendUnavailableError as err:
        return None, None, err
    return backend, kernels.kernel_compute_dtype(backend, point.model.dtype, q.compute), None


def resolve(point: SweepPoint) -> PointPlan:
    """The plan of a validated point; see the module docstring."""
    device = resolve_device(point.device)
    dirs = Dirs(Path(point.outputs_dir).resolve())
    ckpt = _checkpoint(point)
    px = point.eval.encoder.pixels(device)
    if not point.quant.enabled:
        original = EvalJob(point.eval, ckpt.mteb_name, keys.eval_revision(ckpt.mteb_revision, point, pixels=px), None,
                           None, dirs.results, dirs.cache, device, point.force,
                           page_revision=keys.page_revision(ckpt.mteb_revision, point, pixels=px), pixels=px)  # fmt: skip
        if point.eval.index.is_default:  # the original itself
            return PointPlan(point, device, R.ROLE_BASELINE, keys.point_key(point, device), keys.eval_hash(point),
                             f"original · {point.model.name} (baseline)", dirs, ckpt, original)  # fmt: skip
        # the original's weights behind a compressed index: a configuration compared with the original
        return PointPlan(point, device, R.ROLE_QUANTIZED, keys.point_key(point, device), keys.eval_hash(point),
                         f"{point.model.name} {point.label}", dirs, ckpt, original, None,
                         resolve(dataclasses.replace(baseline_of(point), force=False)))  # fmt: skip
    calibrates = point.quant.needs_calibration
    calib_rev, calib_problem = _calibration_pin(point) if calibrates else (None, None)
    semantics = page_calib.semantics(point.calib) if calibrates else None
    key = keys.artifact_key(point, calib_rev, semantics, device.split(":")[0]) if calib_problem is None else None
    backend, compute, kernel_problem = _kernels(point, device)
    quant = QuantJob(point.quant, point.seed, point.calib, calib_rev, semantics, key, keys.quant_knobs(point), ckpt,
                     device, point.force, dirs.models, point.label, calib_problem)  # fmt: skip
    revision = keys.eval_revision(key, point, compute, px) if key is not None else None
    pages = keys.page_revision(key, point, compute, px) if key is not None else None
    evaluation = EvalJob(point.eval, f"{ckpt.mteb_name}-{point.quant.mteb_suffix()}", revision, backend, compute,
                         dirs.results, dirs.cache, device, point.force, kernel_problem, pages, px)  # fmt: skip
    return PointPlan(point, device, R.ROLE_QUANTIZED, keys.point_key(point, device, calib_rev), keys.eval_hash(point),
                     f"{point.model.name} {point.label}", dirs, ckpt, evaluation, quant,
                     resolve(dataclasses.replace(baseline_of(point), force=False)))  # fmt: skip
