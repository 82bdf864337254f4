"""One sweep point = quantize (or reuse) -> evaluate (or reuse) -> baseline -> track, isolated from every other point.

`run_point` is a plain function of a validated `SweepPoint` (tests call it without Hydra); the Hydra-side wrapper
that knows about the multirun (parent run, job directory, status file) is pipeline/job.py.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from colq_sweep import contract as R
from colq_sweep.config import SweepPoint, baseline_of
from colq_sweep.console import say, stage
from colq_sweep.fsio import file_lock
from colq_sweep.keys import checkpoint_identity, eval_revision, kernel_compute, point_key
from colq_sweep.runtime import resolve_device
from colq_sweep.track import sysmetrics
from colq_sweep.track.store import Tracker, resolve_tracking_uri
from colq_sweep.track.tags import device_tags, point_tags

log = logging.getLogger("colq_sweep.pipeline")


@dataclass
class PointOutcome:
    label: str
    model: str
    status: str  # FINISHED | FAILED | SKIPPED | KILLED
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


@dataclass
class EvalRecord:
    """A finished evaluation as logged in MLflow (the baseline's, typically)."""

    run_id: str
    entries: list[dict]
    per_query: list[dict]
    metrics: dict[str, float]


def _log_results(tracker: Tracker, run_id: str, entries: list[dict], per_query: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        R.write_csv(d / R.ENTRIES_CSV, entries, R.ENTRY_COLUMNS)
        R.write_csv(d / R.PER_QUERY_CSV, per_query, R.PER_QUERY_COLUMNS)
        tracker.log_artifacts(run_id, d, R.RESULTS_DIR)


def _load_record(tracker: Tracker, run) -> EvalRecord:
    with tempfile.TemporaryDirectory() as tmp:
        entries = R.read_csv(tracker.download(run.info.run_id, R.ENTRIES_ARTIFACT, tmp))
        per_query = R.read_csv(tracker.download(run.info.run_id, R.PER_QUERY_ARTIFACT, tmp))
    return EvalRecord(run.info.run_id, entries, per_query, dict(run.data.metrics))


def _dirs(point: SweepPoint) -> dict[str, Path]:
    out = Path(point.outputs_dir).resolve()
    return {"models": out / "models", "results": out / "results", "cache": out / "cache", "locks": out / "locks"}


def _evaluate(point: SweepPoint, loader: Callable, name: str, revision: str, device: str, force: bool, progress: str):
    from colq_sweep.evaluate.run import evaluate_model

    d = _dirs(point)
    return evaluate_model(loader, point.eval, model_name=name, model_revision=revision, results_dir=d["results"],
                          cache_dir=d["cache"], device=device, force=force, progress=progress)  # fmt: skip


def _who(point: SweepPoint) -> str:
    return f"{point.model.name} {point.label}"


def _eval_summary(result, metrics: dict[str, float]) -> str:
    """The evaluate stage's result line, from the averages `R.summarise` put into `metrics`."""
    t = result.timing
    how = "all from caches" if result.from_cache else f"{int(t['pages_encoded'])} pages + {int(t['queries_encoded'])} queries encoded"
    return f"{len(result.entries)} entries, avg ndcg@5 {metrics['avg_ndcg_at_5_all']:.5f}; {how}"


def _load_base(point: SweepPoint, device: str):
    def load():
        from colq_sweep.model import ColQwen3Processor, load_colqwen3, resolve_checkpoint_dir

        path = resolve_checkpoint_dir(point.model.source, point.model.revision)
        model = load_colqwen3(path, dtype=point.model.dtype, device=device)
        return model, ColQwen3Processor.from_checkpoint(path, point.model.max_num_visual_tokens)

    return load


def _load_quantized(point: SweepPoint, path: Path, device: str):
    def load():
        from colq_sweep.model import ColQwen3Processor
        from colq_sweep.quantize.load import load_quantized

        model = load_quantized(path, backend=point.quant.backend, device=device, dtype=point.model.dtype,
                               compute=point.quant.compute)  # fmt: skip
        return model, ColQwen3Processor.from_checkpoint(path, point.model.max_num_visual_tokens)

    return load


def _fail(
    tracker: Tracker, run_id: str, exc: BaseException, status: str = "FAILED", artifacts: list[Path] = (), monitor=None
) -> str:
    """Close a run that did not finish: its config and logs (as a FINISHED run has them), the traceback, the error."""
    if monitor is not None:
        monitor.finish()
    for f in artifacts:
        try:
            tracker.log_artifact(run_id, f)
        except Exception:  # noqa: BLE001 - the traceback below matters more than a log file
            log.warning("could not log %s to the failed run %s", f, run_id)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "traceback.txt"
        p.write_text(text)
        try:
            tracker.log_artifact(run_id, p)
            tracker.log(run_id, tags={R.ERROR: f"{type(exc).__name__}: {exc}"[:4000]})
        finally:
            tracker.finish(run_id, status)
    return f"{type(exc).__name__}: {exc}"


def ensure_baseline(
    point: SweepPoint, tracker: Tracker, parent_id: str | None, who: str, extra_artifacts: list[Path] = ()
) -> tuple[EvalRecord, bool]:
    """The model's unquantized evaluation, as the `baseline` stage of `who`: found in MLflow if a finished run
    exists, else evaluated once.

    Returns (record, computed_now). A file lock makes concurrent points of one sweep wait for one evaluation;
    quantized points call this only after their own work, so no GPU idles behind the lock.
    """
    with stage(who, "baseline") as st:
        record, computed = _baseline(point, tracker, parent_id, who, extra_artifacts)
        st["result"] = f"{'evaluated and tracked as' if computed else 'reused'} run {record.run_id}"
    return record, computed


def _baseline(
    point: SweepPoint, tracker: Tracker, parent_id: str | None, who: str, extra_artifacts: list[Path]
) -> tuple[EvalRecord, bool]:
    base = baseline_of(point)
    device = resolve_device(point.device)
    h = point_key(base, device)
    forced = point.force and not point.quant.enabled
    query = f"tags.`{R.RUN_KEY}` = '{h}' and tags.`{R.ROLE}` = '{R.ROLE_BASELINE}'"
    with file_lock(_dirs(point)["locks"] / f"baseline-{h}.lock"):
        if not forced:
            found = tracker.find(query)
            if found:  # the baseline stage's line names the reused run
                return _load_record(tracker, found[0]), False
        tracker.mark_dead_runs_killed(h)
        run_id = tracker.create_run(
            f"{point.model.name} original", {**point_tags(base, R.ROLE_BASELINE, h), **device_tags(device)}, parent_id
        )
        monitor = sysmetrics.start(point.system_metrics, device, tracker, run_id)
        try:
            tracker.log(run_id, params=R.flatten(base.to_dict()))
            name, revision = checkpoint_identity(base)
            tracker.log(run_id, tags={R.ARTIFACT_KEY: f"{name}@{revision}"})
            result = _evaluate(base, _load_base(base, device), name, eval_revision(revision, base), device, force=forced,
                               progress=f"{who} | baseline evaluate")  # fmt: skip
            metrics = {**R.summarise(result.entries), **R.eval_metrics(result.timing)}
            metrics.update(_base_size(base))
            tracker.log(run_id, metrics=metrics, tags=R.eval_tags(result.from_cache, result.dataset_revisions))
            _log_results(tracker, run_id, result.entries, result.per_query)
            for a in extra_artifacts:
                tracker.log_artifact(run_id, a)
            monitor.finish()
            tracker.finish(run_id)
        except BaseException as exc:
            _fail(tracker, run_id, exc, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", extra_artifacts, monitor)
            raise
        return EvalRecord(run_id, result.entries, result.per_query, metrics), True


def _base_size(point: SweepPoint) -> dict[str, float]:
    from colq_sweep.model import resolve_checkpoint_dir
    from colq_sweep.quantize.sizes import checkpoint_bytes

    weights, total = checkpoint_bytes(resolve_checkpoint_dir(point.model.source, point.model.revision))
    return {"total_bytes": float(total), "weights_bytes": float(weights)}


def run_point(
    point: SweepPoint,
    *,
    sweep_id: str | None = None,
    config_yaml: str | None = None,
    log_files: list[Path] = (),
    who: str | None = None,
) -> PointOutcome:
    """Quantize (or reuse) -> evaluate (or reuse) -> compare with the baseline -> track. Never raises for a
    failure of the point itself: its run is marked FAILED with the traceback and the outcome says so
    (KeyboardInterrupt still propagates, after marking the run KILLED). `who` names the point on the console."""
    who = who or _who(point)
    tracker = Tracker(resolve_tracking_uri(point.outputs_dir, point.tracking_uri), point.name)
    parent_id = tracker.find_parent(sweep_id) if sweep_id else None
    device = resolve_device(point.device)
    h = point_key(point, device)
    role = R.ROLE_QUANTIZED if point.quant.enabled else R.ROLE_BASELINE
    killed = tracker.mark_dead_runs_killed(h)
    if killed:
        log.info("marked %d run(s) of this point left RUNNING by a dead process as KILLED", len(killed))

    if not point.force:
        done = tracker.find(f"tags.`{R.RUN_KEY}` = '{h}' and tags.`{R.ROLE}` = '{role}'")
        if done:
            run = done[0]
            say("%s | skip: already FINISHED as run %s (run key %s; force=true recomputes)", who, run.info.run_id, h)
            return PointOutcome(point.label, point.model.name, "SKIPPED", run.info.run_id, dict(run.data.metrics))

    tmpdir = tempfile.TemporaryDirectory()
    extra: list[Path] = []
    if config_yaml:
        p = Path(tmpdir.name) / "config.yaml"
        p.write_text(config_yaml)
        extra.append(p)
    logs = [f for f in log_files if f.exists()]
    try:
        if not point.quant.enabled:
            return _run_baseline_point(point, tracker, parent_id, extra + logs, who)
        return _run_quantized_point(point, tracker, parent_id, device, h, extra, logs, Path(tmpdir.name), who)
    finally:
        tmpdir.cleanup()


def _run_baseline_point(
    point: SweepPoint, tracker: Tracker, parent_id: str | None, artifacts: list[Path], who: str
) -> PointOutcome:
    try:
        if point.fail_point:
            raise RuntimeError("fail_point=true: this point was made to fail on purpose (a testing aid)")
        record, _ = ensure_baseline(point, tracker, parent_id, who, artifacts)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded (ensure_baseline marks its run) and reported
        log.error("baseline of %s failed: %s", point.model.name, exc)
        return PointOutcome(point.label, point.model.name, "FAILED", None, {}, f"{type(exc).__name__}: {exc}")
    return PointOutcome(point.label, point.model.name, "FINISHED", record.run_id, record.metrics)


def _run_quantized_point(
    point: SweepPoint, tracker: Tracker, parent_id: str | None, device: str, key: str,
    extra: list[Path], logs: list[Path], tmp: Path, who: str,
) -> PointOutcome:  # fmt: skip
    run_id = tracker.create_run(
        f"{point.model.name} {point.label}", {**point_tags(point, R.ROLE_QUANTIZED, key), **device_tags(device)}, parent_id
    )
    log.info("point %s / %s -> run %s", point.model.name, point.label, run_id)
    monitor = sysmetrics.start(point.system_metrics, device, tracker, run_id)
    try:
        tracker.log(run_id, params=R.flatten(point.to_dict()))
        if point.fail_point:
            raise RuntimeError("fail_point=true: this point was made to fail on purpose (a testing aid)")
        from colq_sweep.model import resolve_checkpoint_dir
        from colq_sweep.quantize.sizes import size_report
        from colq_sweep.quantize.stage import quantize_point

        # Before hours of quantization: can this machine serve the exported checkpoint at all?
        kernel, compute = kernel_compute(point, device)
        tracker.log(run_id, tags={R.KERNEL_BACKEND: kernel, R.KERNEL_COMPUTE: compute})

        with stage(who, "quantize") as st:
            t0 = time.perf_counter()
            artifact = quantize_point(point, _dirs(point)["models"])
            tracker.log(run_id, tags={R.ARTIFACT_KEY: artifact.key, R.ARTIFACT_REUSED: str(artifact.reused).lower()})
            manifest = artifact.manifest
            base_dir = resolve_checkpoint_dir(point.model.source, point.model.revision)
            metrics: dict[str, float] = dict(size_report(base_dir, artifact.path))
            for k in ("quant_seconds", "quant_peak_rss_mb", "quant_peak_cuda_mb", "samples_used"):
                if isinstance(manifest.get(k), (int, float)):
                    metrics[k] = float(manifest[k])
            metrics["quant_stage_seconds"] = time.perf_counter() - t0
            st["result"] = f"{'reused' if artifact.reused else 'built'} artifact {artifact.key}"

        with stage(who, "evaluate") as st:
            name = f"colq_sweep/{point.model.name}-w{point.quant.bits}"
            result = _evaluate(point, _load_quantized(point, artifact.path, device), name,
                               eval_revision(artifact.key, point, device), device, force=point.force,
                               progress=f"{who} | evaluate")  # fmt: skip
            metrics.update(R.summarise(result.entries))
            metrics.update(R.eval_metrics(result.timing))
            st["result"] = _eval_summary(result, metrics)
        # The baseline last: points of one model quantize side by side instead of waiting for its evaluation.
        baseline, _ = ensure_baseline(point, tracker, parent_id, who)
        metrics.update(R.compare(result.entries, baseline.entries))
        with stage(who, "track") as st:
            tracker.log(run_id, metrics=metrics, tags={**R.eval_tags(result.from_cache, result.dataset_revisions), R.BASELINE_REF: baseline.run_id})
            _log_results(tracker, run_id, result.entries, result.per_query)
            mpath = tmp / "quantization_manifest.json"
            mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
            for a in extra + [mpath] + logs:
                tracker.log_artifact(run_id, a)
            monitor.finish()
            tracker.finish(run_id)
            st["result"] = (f"run {run_id} FINISHED: avg ndcg@5 {metrics['avg_ndcg_at_5_all']:.5f}, "
                            f"delta {metrics.get('delta_ndcg_at_5_all', float('nan')):+.5f}")  # fmt: skip
        return PointOutcome(point.label, point.model.name, "FINISHED", run_id, metrics)
    except KeyboardInterrupt as exc:
        _fail(tracker, run_id, exc, "KILLED", extra + logs, monitor)
        raise
    except BaseException as exc:  # noqa: BLE001 - isolate the failure: record it, let the other points run
        err = _fail(tracker, run_id, exc, "FAILED", extra + logs, monitor)
        log.error("point %s / %s FAILED: %s", point.model.name, point.label, err)
        return PointOutcome(point.label, point.model.name, "FAILED", run_id, {}, err)
