"""One sweep point = quantize (or reuse) -> evaluate (or reuse) -> baseline -> track, isolated from every other point.

`run_point` is a plain function of a resolved `PointPlan` (pipeline/plan.py; tests call it without Hydra); the
Hydra-side wrapper that knows about the multirun (parent run, job directory, status file) is pipeline/job.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from colq_sweep import contract as R
from colq_sweep.console import say, stage
from colq_sweep.evaluate.shards import Offer, sharing_enabled
from colq_sweep.fsio import file_lock
from colq_sweep.pipeline.plan import EvalJob, PointPlan
from colq_sweep.track import sysmetrics
from colq_sweep.track.serverwatch import ServerWatch
from colq_sweep.track.store import Tracker, TrackingUnavailable, resolve_tracking_uri
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


def _log_results(tracker: Tracker, run_id: str, result) -> None:
    """results/entries.csv, results/per_query.csv and mteb's own result file of each task (results/mteb/<Task>.json:
    what `python -m colq_sweep.report --mteb-export` lays out for mteb's loaders)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        R.write_csv(d / R.ENTRIES_CSV, result.entries, R.ENTRY_COLUMNS)
        R.write_csv(d / R.PER_QUERY_CSV, result.per_query, R.PER_QUERY_COLUMNS)
        mteb_dir = d / Path(R.MTEB_ARTIFACTS).name
        mteb_dir.mkdir()
        for task, path in sorted(result.task_results.items()):
            if Path(path).is_file():
                shutil.copyfile(path, mteb_dir / f"{task}.json")
        if result.model_meta:  # the encoder's ModelMeta (embed_dim from the checkpoint's config: _evaluate)
            (mteb_dir / "model_meta.json").write_text(json.dumps(result.model_meta, indent=2, sort_keys=True))
        tracker.log_artifacts(run_id, d, R.RESULTS_DIR)


def _catalog(tracker: Tracker, run_id: str, plan: PointPlan, result, metrics: dict[str, float], where: str,
             revision: str | None) -> None:  # fmt: skip
    """The point's logged model, dataset inputs and entries table (track/catalog.py). Extras for the UI: a store
    that refuses them (an older server) costs a warning, not the point."""
    from colq_sweep.track import catalog

    try:
        catalog.log_inputs(tracker, run_id, result.entries, result.dataset_revisions, plan)
        catalog.log_entries_table(tracker, run_id, result.entries)
        catalog.log_model(tracker, run_id, plan, catalog.checkpoint_uri(where, revision), metrics)
    except TrackingUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("run %s: logged model / dataset inputs / table not recorded: %s: %s", run_id, type(exc).__name__, exc)


def _load_record(tracker: Tracker, run) -> EvalRecord:
    with tempfile.TemporaryDirectory() as tmp:
        entries = R.read_csv(tracker.download(run.info.run_id, R.ENTRIES_ARTIFACT, tmp))
        per_query = R.read_csv(tracker.download(run.info.run_id, R.PER_QUERY_ARTIFACT, tmp))
    return EvalRecord(run.info.run_id, entries, per_query, R.tracked(dict(run.data.metrics)))


def _evaluate(job: EvalJob, loader: Callable, progress: str, checkpoint: Path, share: Offer | None = None):
    from colq_sweep.evaluate.run import evaluate_model

    result = evaluate_model(loader, job.spec, model_name=job.model_name, model_revision=job.revision,
                            results_dir=job.results_dir, cache_dir=job.cache_dir, device=job.device, force=job.force,
                            progress=progress, page_revision=job.page_revision, pixels=job.pixels, share=share)  # fmt: skip
    if result.model_meta.get("embed_dim") is None:  # all from caches: the model never loaded; its config says it
        dim = json.loads((Path(checkpoint) / "config.json").read_text()).get("embed_dim")
        result.model_meta["embed_dim"] = int(dim) if dim is not None else None
    return result


def _eval_summary(result, metrics: dict[str, float]) -> str:
    """The evaluate stage's result line, from the averages `R.summarise` put into `metrics`."""
    t = result.timing
    how = "all from caches" if result.from_cache else f"{int(t['pages_encoded'])} pages + {int(t['queries_encoded'])} queries encoded"
    return f"{len(result.entries)} entries, avg ndcg@5 {metrics[R.AVG5_ALL]:.5f}; {how}"


def _load_base(plan: PointPlan):
    def load():
        from colq_sweep.model import ColQwen3Processor, load_colqwen3

        ckpt = plan.checkpoint
        path = ckpt.dir()
        model = load_colqwen3(path, dtype=ckpt.dtype, device=plan.device)
        return model, ColQwen3Processor.from_checkpoint(path, ckpt.max_visual_tokens)

    return load


def _load_quantized(plan: PointPlan, path: Path):
    def load():
        from colq_sweep.model import ColQwen3Processor
        from colq_sweep.quantize.load import load_quantized

        q, ckpt = plan.point.quant, plan.checkpoint
        model = load_quantized(path, backend=q.backend, device=plan.device, dtype=ckpt.dtype, compute=q.compute)
        return model, ColQwen3Processor.from_checkpoint(path, ckpt.max_visual_tokens)

    return load


def _fail(
    tracker: Tracker, run_id: str, exc: BaseException, status: str = "FAILED", artifacts: list[Path] = (), monitor=None
) -> str:
    """Close a run that did not finish: its config and logs (as a FINISHED run has them), the traceback, the error.
    With the tracking server gone the run cannot be closed: it stays RUNNING until a later sweep, which finds its
    process gone, marks it KILLED; what was built or evaluated stays in outputs/ and is reused then."""
    error = f"{type(exc).__name__}: {exc}"
    try:
        if monitor is not None:
            monitor.finish()
        if not isinstance(exc, TrackingUnavailable):
            _record_failure(tracker, run_id, exc, status, artifacts)
    except TrackingUnavailable as lost:
        log.error("run %s could not be marked %s: %s", run_id, status, lost)
    return error


def _record_failure(tracker: Tracker, run_id: str, exc: BaseException, status: str, artifacts: list[Path]) -> None:
    for f in artifacts:
        try:
            tracker.log_artifact(run_id, f)
        except TrackingUnavailable:
            raise
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


def ensure_baseline(
    plan: PointPlan, tracker: Tracker, parent_id: str | None, who: str, extra_artifacts: list[Path] = (),
    share: Offer | None = None,
) -> tuple[EvalRecord, bool]:
    """The model's unquantized evaluation (`plan` is the baseline's plan), as the `baseline` stage of `who`: found
    in MLflow if a finished run exists, else evaluated once.

    Returns (record, computed_now). A file lock makes concurrent points of one sweep wait for one evaluation;
    quantized points call this only after their own work, so no GPU idles behind the lock.
    """
    with stage(who, "baseline") as st:
        record, computed = _baseline(plan, tracker, parent_id, who, extra_artifacts, share)
        st["result"] = f"{'evaluated and tracked as' if computed else 'reused'} run {record.run_id}"
    return record, computed


def _baseline(
    plan: PointPlan, tracker: Tracker, parent_id: str | None, who: str, extra_artifacts: list[Path], share: Offer | None
) -> tuple[EvalRecord, bool]:
    h = plan.run_key
    query = f"tags.`{R.RUN_KEY}` = '{h}' and tags.`{R.ROLE}` = '{R.ROLE_BASELINE}'"
    with file_lock(plan.dirs.locks / f"baseline-{h}.lock"):
        if not plan.eval.force:
            found = tracker.find(query)
            if found:  # the baseline stage's line names the reused run
                return _load_record(tracker, found[0]), False
        tracker.mark_dead_runs_killed(h)
        run_id = tracker.create_run(plan.run_name, {**point_tags(plan), **device_tags(plan.device)}, parent_id)
        monitor = sysmetrics.start(plan.point.system_metrics, plan.device, tracker, run_id)
        try:
            params = plan.point.params()
            tracker.log(run_id, params=params, metrics=R.knob_metrics(params))
            tracker.log(run_id, tags={R.ARTIFACT_KEY: f"{plan.checkpoint.mteb_name}@{plan.checkpoint.mteb_revision}"})
            result = _evaluate(plan.eval, _load_base(plan), f"{who} | baseline evaluate", plan.checkpoint.dir(),
                               share.of("baseline") if share else None)  # fmt: skip
            metrics = {**R.summarise(result.entries), **R.eval_metrics(result.timing), **_base_size(plan)}
            tracker.log(run_id, metrics=metrics, tags=R.eval_tags(result.from_cache, result.dataset_revisions, result.shards))
            _log_results(tracker, run_id, result)
            _catalog(tracker, run_id, plan, result, metrics, plan.checkpoint.source, plan.checkpoint.revision)
            for a in extra_artifacts:
                tracker.log_artifact(run_id, a)
            monitor.finish()
            tracker.finish(run_id)
        except BaseException as exc:
            _fail(tracker, run_id, exc, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", extra_artifacts, monitor)
            raise
        return EvalRecord(run_id, result.entries, result.per_query, metrics), True


def _settings_file(plan: PointPlan, tmp: Path) -> Path:
    """config.yaml for an original evaluated inside a quantized point's job (whose own config.yaml is the quantized
    point's): the settings that define the original's result (its params), nested as in a config. The same
    whichever point evaluated it."""
    import yaml

    nested: dict = {}
    for k, v in plan.point.params().items():
        *parents, leaf = k.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    p = tmp / "original" / "config.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("# the original's settings (its run's params); evaluated inside a quantized point's job\n"
                 + yaml.safe_dump(nested, sort_keys=False))  # fmt: skip
    return p


def _base_size(plan: PointPlan) -> dict[str, float]:
    from colq_sweep.quantize.sizes import checkpoint_bytes, param_counts

    weights, total = checkpoint_bytes(plan.checkpoint.dir())
    return {R.TOTAL_BYTES: float(total), R.WEIGHTS_BYTES: float(weights),
            R.PARAMS_TOTAL: param_counts(plan.checkpoint.dir())["params_total"]}


def run_point(
    plan: PointPlan,
    *,
    sweep_id: str | None = None,
    config_yaml: str | None = None,
    log_files: list[Path] = (),
    who: str | None = None,
) -> PointOutcome:
    """Quantize (or reuse) -> evaluate (or reuse) -> compare with the baseline -> track. Never raises for a
    failure of the point itself: its run is marked FAILED with the traceback and the outcome says so
    (KeyboardInterrupt still propagates, after marking the run KILLED). `who` names the point on the console."""
    who = who or f"{plan.model} {plan.label}"
    uri = resolve_tracking_uri(plan.point.outputs_dir, plan.point.tracking_uri)
    try:
        with ServerWatch(uri, who):  # a server that stops answering is said within ~20 s, the work goes on
            return _run_point(plan, uri, sweep_id, config_yaml, log_files, who)
    except TrackingUnavailable as exc:  # before the point's run existed, or while its failure was recorded
        log.error("%s | FAILED: %s; what finished stays in outputs/ and a rerun reuses it", who, exc)
        return PointOutcome(plan.label, plan.model, "FAILED", None, {}, f"{type(exc).__name__}: {exc}")


def _run_point(plan: PointPlan, uri: str, sweep_id: str | None, config_yaml: str | None, log_files: list[Path], who: str):
    point = plan.point
    tracker = Tracker(uri, point.name)
    parent_id = tracker.find_parent(sweep_id) if sweep_id else None
    killed = tracker.mark_dead_runs_killed(plan.run_key)
    if killed:
        log.info("marked %d run(s) of this point left RUNNING by a dead process as KILLED", len(killed))
    if not point.force:
        done = tracker.find(f"tags.`{R.RUN_KEY}` = '{plan.run_key}' and tags.`{R.ROLE}` = '{plan.role}'")
        if done:
            run = done[0]
            say("%s | skip: already FINISHED as run %s (run key %s; force=true recomputes)", who, run.info.run_id, plan.run_key)
            return PointOutcome(plan.label, plan.model, "SKIPPED", run.info.run_id, R.tracked(dict(run.data.metrics)))

    with tempfile.TemporaryDirectory() as tmp:
        extra: list[Path] = []
        if config_yaml:
            p = Path(tmp) / "config.yaml"
            p.write_text(config_yaml)
            extra.append(p)
        logs = [f for f in log_files if f.exists()]
        share = None  # idle GPU slots of a gpu-pool sweep may take some of this point's tasks (evaluate/shards.py)
        if sharing_enabled() and sweep_id and config_yaml:
            share = Offer(str(plan.dirs.outputs), sweep_id, config_yaml)
        if plan.role == R.ROLE_BASELINE:
            return _run_baseline_point(plan, tracker, parent_id, extra + logs, who, share)
        return _run_quantized_point(plan, tracker, parent_id, extra, logs, Path(tmp), who, share)


def _fail_on_purpose(plan: PointPlan) -> None:
    if plan.point.fail_point:
        raise RuntimeError("fail_point=true: this point was made to fail on purpose (a testing aid)")


def _run_baseline_point(
    plan: PointPlan, tracker: Tracker, parent_id: str | None, artifacts: list[Path], who: str, share: Offer | None
) -> PointOutcome:
    try:
        _fail_on_purpose(plan)
        record, _ = ensure_baseline(plan, tracker, parent_id, who, artifacts, share)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded (ensure_baseline marks its run) and reported
        log.error("baseline of %s failed: %s", plan.model, exc)
        return PointOutcome(plan.label, plan.model, "FAILED", None, {}, f"{type(exc).__name__}: {exc}")
    return PointOutcome(plan.label, plan.model, "FINISHED", record.run_id, record.metrics)


def _run_quantized_point(
    plan: PointPlan, tracker: Tracker, parent_id: str | None, extra: list[Path], logs: list[Path], tmp: Path, who: str,
    share: Offer | None = None,
) -> PointOutcome:  # fmt: skip
    run_id = tracker.create_run(plan.run_name, {**point_tags(plan), **device_tags(plan.device)}, parent_id)
    log.info("point %s / %s -> run %s", plan.model, plan.label, run_id)
    monitor = sysmetrics.start(plan.point.system_metrics, plan.device, tracker, run_id)
    try:
        params = plan.point.params()
        tracker.log(run_id, params=params, metrics=R.knob_metrics(params))
        _fail_on_purpose(plan)
        if plan.eval.problem is not None:  # before hours of quantization: can this machine serve the export at all?
            raise plan.eval.problem
        if plan.quant is not None:
            tracker.log(run_id, tags={R.KERNEL_BACKEND: plan.eval.backend, R.KERNEL_COMPUTE: plan.eval.compute_dtype})
            artifact, metrics = _quantize_stage(plan, tracker, run_id, who)
        else:  # the original's weights behind a compressed index: nothing to quantize
            artifact, metrics = None, _base_size(plan)
        result = _evaluate_stage(plan, artifact, metrics, who, share)
        # The baseline last: points of one model quantize side by side instead of waiting for its evaluation. Its
        # run gets its own config.yaml and this job's log so far (which has its evaluation).
        own = [_settings_file(plan.baseline, tmp), *logs]
        baseline, _ = ensure_baseline(plan.baseline, tracker, parent_id, who, own, share)
        metrics.update(R.compare(result.entries, baseline.entries))
        manifest = artifact.manifest if artifact is not None else None
        where = (str(artifact.path), None) if artifact is not None else (plan.checkpoint.source, plan.checkpoint.revision)
        _track_stage(tracker, run_id, result, baseline, metrics, manifest, (extra, logs), tmp, monitor, who,
                     lambda: _catalog(tracker, run_id, plan, result, metrics, *where))  # fmt: skip
        return PointOutcome(plan.label, plan.model, "FINISHED", run_id, metrics)
    except KeyboardInterrupt as exc:
        _fail(tracker, run_id, exc, "KILLED", extra + logs, monitor)
        raise
    except BaseException as exc:  # noqa: BLE001 - isolate the failure: record it, let the other points run
        err = _fail(tracker, run_id, exc, "FAILED", extra + logs, monitor)
        log.error("point %s / %s FAILED: %s", plan.model, plan.label, err)
        return PointOutcome(plan.label, plan.model, "FAILED", run_id, {}, err)


def _quantize_stage(plan: PointPlan, tracker: Tracker, run_id: str, who: str):
    from colq_sweep.quantize.sizes import size_report
    from colq_sweep.quantize.stage import quantize

    with stage(who, "quantize") as st:
        t0 = time.perf_counter()
        artifact = quantize(plan.quant)
        tracker.log(run_id, tags={R.ARTIFACT_KEY: artifact.key, R.ARTIFACT_REUSED: str(artifact.reused).lower()})
        manifest = artifact.manifest
        metrics: dict[str, float] = dict(size_report(plan.checkpoint.dir(), artifact.path))
        for k in ("quant_seconds", "quant_peak_rss_mb", "quant_peak_cuda_mb", "samples_used"):
            if isinstance(manifest.get(k), (int, float)):
                metrics[k] = float(manifest[k])
        metrics = R.tracked({**metrics, "quant_stage_seconds": time.perf_counter() - t0})
        st["result"] = f"{'reused' if artifact.reused else 'built'} artifact {artifact.key}"
    return artifact, metrics


def _evaluate_stage(plan: PointPlan, artifact, metrics: dict[str, float], who: str, share: Offer | None = None):
    with stage(who, "evaluate") as st:
        loader = _load_base(plan) if artifact is None else _load_quantized(plan, artifact.path)
        ckpt = plan.checkpoint.dir() if artifact is None else artifact.path
        offer = share.of("point", None if artifact is None else str(artifact.path)) if share else None
        result = _evaluate(plan.eval, loader, f"{who} | evaluate", ckpt, offer)
        metrics.update(R.summarise(result.entries))
        metrics.update(R.eval_metrics(result.timing))
        st["result"] = _eval_summary(result, metrics)
    return result


def _track_stage(tracker: Tracker, run_id: str, result, baseline: EvalRecord, metrics: dict[str, float], manifest: dict | None,
                 files: tuple[list[Path], list[Path]], tmp: Path, monitor, who: str, catalog=None) -> None:  # fmt: skip
    """Metrics, results, the config, the manifest and the logs onto the run, which is then FINISHED."""
    with stage(who, "track") as st:
        tags = R.eval_tags(result.from_cache, result.dataset_revisions, result.shards)
        tracker.log(run_id, metrics=metrics, tags={**tags, R.BASELINE_REF: baseline.run_id})
        _log_results(tracker, run_id, result)
        if catalog is not None:
            catalog()
        extra, logs = files
        manifests = []
        if manifest is not None:
            manifests.append(tmp / "quantization_manifest.json")
            manifests[0].write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        for a in extra + manifests + logs:
            tracker.log_artifact(run_id, a)
        monitor.finish()
        tracker.finish(run_id)
        st["result"] = (f"run {run_id} FINISHED: avg ndcg@5 {metrics[R.AVG5_ALL]:.5f}, "
                        f"delta {metrics.get(R.DELTA5_ALL, float('nan')):+.5f}")  # fmt: skip
