"""One sweep point = quantize (or reuse) -> evaluate (or reuse) -> track, isolated from every other point.

`run_point` is a plain function of a validated `SweepPoint` and paths (tests call it without Hydra);
`run_point_job` is the Hydra-side wrapper that knows about the multirun (parent run, job directory, status
file that the end-of-sweep summary reads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from colq_sweep.config import SweepPoint, baseline_of
from colq_sweep.multirun import STATUS_FILE
from colq_sweep.tasks import FIXTURE_TASK
from colq_sweep.tracking import (
    ROLE_BASELINE,
    ROLE_QUANTIZED,
    Tracker,
    file_lock,
    flatten,
    resolve_tracking_uri,
)

log = logging.getLogger("colq_sweep.sweep")


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


# ------------------------------------------------------------------------------------------------ helpers


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def eval_hash(point: SweepPoint) -> str:
    """Same value <=> the same entries were asked for (tasks x languages)."""
    spec = {"tasks": list(point.eval.tasks), "languages": list(point.eval.languages or [])}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_identity(point: SweepPoint) -> tuple[str, str]:
    """(mteb model name, revision) of the 16-bit checkpoint: Hub revision, or the content hash of a local dir."""
    from colq_sweep.model import checkpoint_fingerprint

    fp = checkpoint_fingerprint(point.model.id, point.model.revision, point.model.path)
    return f"colq_sweep/{point.model.name}", point.model.revision or fp.split(":", 1)[1][:16]


def point_key(point: SweepPoint, device: str) -> str:
    """The run key a finished point is found (and skipped) by: the config hash plus the content of what its
    paths point to (checkpoint, calibration file, fixture task) and the device type the work runs on. Editing a
    local file changes it; re-spelling or moving a path does not."""
    from colq_sweep.model import checkpoint_fingerprint

    ids: dict[str, str] = {
        "config": point.config_hash(),
        "checkpoint": checkpoint_fingerprint(point.model.id, point.model.revision, point.model.path),
        "device_type": device.split(":")[0],
    }
    if point.quant.enabled:
        from colq_sweep import calibration

        if point.quant.compute == "auto":  # ark's own choice depends on the CPU: key it on the CPU's int8 ISA
            from colq_sweep.quantize import cpu_int8_isa

            ids["kernel_compute"] = f"ark-auto-{cpu_int8_isa()}"

        try:
            ids["calib"] = calibration.resolve_revision(point.calib)
        except calibration.CalibrationError as err:  # offline with an unpinned Hub ref: the spec stands in
            log.warning("calibration revision not resolvable (%s); keying the run on %s", err, point.calib.identity)
            ids["calib"] = point.calib.identity
    if point.eval.fixture_dir and FIXTURE_TASK in point.eval.tasks:
        from colq_sweep.evaluate import fixture_revision

        ids["fixture"] = fixture_revision(Path(point.eval.fixture_dir))
    return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]


def kernel_compute(point: SweepPoint, device: str) -> tuple[str, str]:
    """(kernel backend, effective compute dtype) that a quantized point's evaluation runs with on `device`."""
    from colq_sweep.quantize import kernel_compute_dtype, resolve_backend

    backend = resolve_backend(point.quant.backend, device)
    return backend, kernel_compute_dtype(backend, point.model.dtype, point.quant.compute)


def eval_revision(checkpoint_rev: str, point: SweepPoint, device: str = "cpu") -> str:
    """The mteb revision of an evaluation: the checkpoint plus every setting that changes its embeddings
    (model dtype, page resolution cap, load-back kernels and the dtype they compute in), so two set-ups never
    share cached results."""
    parts = [checkpoint_rev[:16], point.model.dtype, f"v{point.model.max_num_visual_tokens}"]
    if point.quant.enabled:
        backend, compute = kernel_compute(point, device)
        parts.append(point.quant.backend)
        if compute != point.model.dtype:  # ark's CPU-dependent auto mode
            parts.append(compute)
    return "-".join(parts)


def eval_metrics(timing: dict[str, float]) -> dict[str, float]:
    """The evaluation stage's timing under tracked names (peak memory as eval_peak_*)."""
    return {(f"eval_{k}" if k.startswith("peak_") else k): float(v) for k, v in timing.items() if v == v}  # no NaN


def summarise(entries: list[dict]) -> dict[str, float]:
    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    en = [e for e in entries if e["language"] == "en"]
    out = {
        "avg_ndcg_at_5_all": mean([e["ndcg_at_5"] for e in entries]),
        "avg_ndcg_at_5_en": mean([e["ndcg_at_5"] for e in en]),
        "avg_ndcg_at_10_all": mean([e["ndcg_at_10"] for e in entries]),
        "avg_ndcg_at_10_en": mean([e["ndcg_at_10"] for e in en]),
        "avg_main_score_all": mean([e["main_score"] for e in entries]),
        "n_entries": float(len(entries)),
        "n_entries_en": float(len(en)),
    }
    for e in entries:
        for metric in ("ndcg_at_5", "ndcg_at_10"):
            out[f"entry/{e['task']}/{e['subset']}/{metric}"] = float(e[metric])
    return out


def compare(entries: list[dict], baseline: list[dict]) -> dict[str, float]:
    """Deltas vs the baseline over the entries both have (the same entries on both sides, always)."""
    base = {(e["task"], e["subset"]): e for e in baseline}
    common = [e for e in entries if (e["task"], e["subset"]) in base]
    out: dict[str, float] = {"n_entries_compared": float(len(common)), "n_entries_missing_vs_baseline": float(len(base) - len(common))}
    for scope, sel in (("all", common), ("en", [e for e in common if e["language"] == "en"])):
        if not sel:
            continue
        q = sum(e["ndcg_at_5"] for e in sel) / len(sel)
        b = sum(base[(e["task"], e["subset"])]["ndcg_at_5"] for e in sel) / len(sel)
        out[f"delta_ndcg_at_5_{scope}"] = q - b
        out[f"delta_pct_ndcg_at_5_{scope}"] = 100.0 * (q - b) / b if b else float("nan")
    diffs = [e["ndcg_at_5"] - base[(e["task"], e["subset"])]["ndcg_at_5"] for e in common]
    out["entries_improved"] = float(sum(d > 0 for d in diffs))
    out["entries_degraded"] = float(sum(d < 0 for d in diffs))
    out["entries_unchanged"] = float(sum(d == 0 for d in diffs))
    return out


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)




def _read_csv(path: Path) -> list[dict]:
    import csv

    numeric = {"ndcg_at_5", "ndcg_at_10", "main_score", "recall_at_5", "n_queries"}
    with open(path, newline="") as fh:
        return [{k: (float(v) if k in numeric and v != "" else v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _log_results(tracker: Tracker, run_id: str, entries: list[dict], per_query: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        from colq_sweep.evaluate import ENTRY_KEYS, PER_QUERY_KEYS

        _write_csv(d / "entries.csv", entries, list(ENTRY_KEYS))
        _write_csv(d / "per_query.csv", per_query, list(PER_QUERY_KEYS))
        tracker.log_artifacts(run_id, d, "results")


def _load_record(tracker: Tracker, run) -> EvalRecord:
    with tempfile.TemporaryDirectory() as tmp:
        entries = _read_csv(tracker.download(run.info.run_id, "results/entries.csv", tmp))
        per_query = _read_csv(tracker.download(run.info.run_id, "results/per_query.csv", tmp))
    return EvalRecord(run.info.run_id, entries, per_query, dict(run.data.metrics))


def _common_tags(point: SweepPoint, role: str, key: str) -> dict[str, str]:
    from colq_sweep import __version__

    return {
        "colq.role": role,
        "colq.model": point.model.name,
        "colq.label": point.label,
        "colq.config_hash": key,
        "colq.eval_hash": eval_hash(point),
        "colq.version": __version__,
        **_environment_tags(),
    }


def _environment_tags() -> dict[str, str]:
    import importlib.metadata as md
    import subprocess

    tags = {}
    for pkg in ("torch", "transformers", "auto-round", "mteb", "mlflow", "hydra-core"):
        try:
            tags[f"version.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            tags[f"version.{pkg}"] = "missing"
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            tags["mlflow.source.git.commit"] = sha.stdout.strip()
            tags["colq.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def _device_tags(device: str) -> dict[str, str]:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return {"colq.device": device, "colq.device_name": torch.cuda.get_device_name(), "colq.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    return {"colq.device": device, "colq.device_name": "cpu"}


def _dirs(point: SweepPoint) -> dict[str, Path]:
    out = Path(point.outputs_dir).resolve()
    return {"models": out / "models", "results": out / "results", "cache": out / "cache", "locks": out / "locks"}


def _evaluate(point: SweepPoint, loader: Callable, name: str, revision: str, device: str, force: bool):
    from colq_sweep.evaluate import evaluate_model

    d = _dirs(point)
    return evaluate_model(loader, point.eval, model_name=name, model_revision=revision, results_dir=d["results"],
                          cache_dir=d["cache"], device=device, force=force)  # fmt: skip


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
        from colq_sweep.quantize import load_quantized

        model = load_quantized(path, backend=point.quant.backend, device=device, dtype=point.model.dtype,
                               compute=point.quant.compute)  # fmt: skip
        return model, ColQwen3Processor.from_checkpoint(path, point.model.max_num_visual_tokens)

    return load


def _fail(tracker: Tracker, run_id: str, exc: BaseException, status: str = "FAILED") -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "traceback.txt"
        p.write_text(text)
        try:
            tracker.log_artifact(run_id, p)
            tracker.log(run_id, tags={"colq.error": f"{type(exc).__name__}: {exc}"[:4000]})
        finally:
            tracker.finish(run_id, status)
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------ stages


def ensure_baseline(
    point: SweepPoint, tracker: Tracker, parent_id: str | None, extra_artifacts: list[Path] = ()
) -> tuple[EvalRecord, bool]:
    """The model's unquantized evaluation: found in MLflow if a finished run exists, else evaluated once.

    Returns (record, computed_now). A file lock makes concurrent points of one sweep wait for one evaluation;
    quantized points call this only after their own work, so no GPU idles behind the lock.
    """
    base = baseline_of(point)
    device = resolve_device(point.device)
    h = point_key(base, device)
    forced = point.force and not point.quant.enabled
    query = f"tags.`colq.config_hash` = '{h}' and tags.`colq.role` = '{ROLE_BASELINE}'"
    with file_lock(_dirs(point)["locks"] / f"baseline-{h}.lock"):
        if not forced:
            found = tracker.find(query)
            if found:
                log.info("baseline of %s: reusing finished run %s", point.model.name, found[0].info.run_id)
                return _load_record(tracker, found[0]), False
        tracker.mark_dead_runs_killed(h)
        run_id = tracker.create_run(
            f"{point.model.name} original", {**_common_tags(base, ROLE_BASELINE, h), **_device_tags(device)}, parent_id
        )
        try:
            tracker.log(run_id, params=flatten(base.to_dict()))
            name, revision = checkpoint_identity(base)
            tracker.log(run_id, tags={"colq.artifact_key": f"{name}@{revision}"})
            result = _evaluate(base, _load_base(base, device), name, eval_revision(revision, base), device, force=forced)
            metrics = {**summarise(result.entries), **eval_metrics(result.timing)}
            metrics.update(_base_size(base))
            tracker.log(run_id, metrics=metrics, tags={"colq.eval_from_cache": str(result.from_cache).lower()})
            _log_results(tracker, run_id, result.entries, result.per_query)
            for a in extra_artifacts:
                tracker.log_artifact(run_id, a)
            tracker.finish(run_id)
        except BaseException as exc:
            _fail(tracker, run_id, exc, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        return EvalRecord(run_id, result.entries, result.per_query, metrics), True


def _base_size(point: SweepPoint) -> dict[str, float]:
    from colq_sweep.model import resolve_checkpoint_dir
    from colq_sweep.quantize import checkpoint_bytes

    weights, total = checkpoint_bytes(resolve_checkpoint_dir(point.model.source, point.model.revision))
    return {"total_bytes": float(total), "weights_bytes": float(weights)}


def run_point(
    point: SweepPoint,
    *,
    sweep_id: str | None = None,
    config_yaml: str | None = None,
    log_files: list[Path] = (),
) -> PointOutcome:
    """Quantize (or reuse) -> evaluate (or reuse) -> compare with the baseline -> track. Never raises for a
    failure of the point itself: its run is marked FAILED with the traceback and the outcome says so
    (KeyboardInterrupt still propagates, after marking the run KILLED)."""
    tracker = Tracker(resolve_tracking_uri(point.outputs_dir, point.tracking_uri), point.name)
    parent_id = tracker.find_parent(sweep_id) if sweep_id else None
    device = resolve_device(point.device)
    h = point_key(point, device)
    role = ROLE_QUANTIZED if point.quant.enabled else ROLE_BASELINE
    killed = tracker.mark_dead_runs_killed(h)
    if killed:
        log.info("marked %d run(s) of this point left RUNNING by a dead process as KILLED", len(killed))

    if not point.force:
        done = tracker.find(f"tags.`colq.config_hash` = '{h}' and tags.`colq.role` = '{role}'")
        if done:
            run = done[0]
            log.info("skip %s / %s: already FINISHED as run %s (run key %s; force=true recomputes)",
                     point.model.name, point.label, run.info.run_id, h)  # fmt: skip
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
            return _run_baseline_point(point, tracker, parent_id, extra + logs)
        return _run_quantized_point(point, tracker, parent_id, device, h, extra, logs, Path(tmpdir.name))
    finally:
        tmpdir.cleanup()


def _run_baseline_point(point: SweepPoint, tracker: Tracker, parent_id: str | None, artifacts: list[Path]) -> PointOutcome:
    try:
        if point.fail_point:
            raise RuntimeError("fail_point=true: this point was made to fail on purpose (a testing aid)")
        record, _ = ensure_baseline(point, tracker, parent_id, artifacts)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded (ensure_baseline marks its run) and reported
        log.error("baseline of %s failed: %s", point.model.name, exc)
        return PointOutcome(point.label, point.model.name, "FAILED", None, {}, f"{type(exc).__name__}: {exc}")
    return PointOutcome(point.label, point.model.name, "FINISHED", record.run_id, record.metrics)


def _run_quantized_point(
    point: SweepPoint, tracker: Tracker, parent_id: str | None, device: str, key: str,
    extra: list[Path], logs: list[Path], tmp: Path,
) -> PointOutcome:  # fmt: skip
    run_id = tracker.create_run(
        f"{point.model.name} {point.label}", {**_common_tags(point, ROLE_QUANTIZED, key), **_device_tags(device)}, parent_id
    )
    log.info("point %s / %s -> run %s", point.model.name, point.label, run_id)
    try:
        tracker.log(run_id, params=flatten(point.to_dict()))
        if point.fail_point:
            raise RuntimeError("fail_point=true: this point was made to fail on purpose (a testing aid)")
        from colq_sweep.model import resolve_checkpoint_dir
        from colq_sweep.quantize import quantize_point, size_report

        # Before hours of quantization: can this machine serve the exported checkpoint at all?
        kernel, compute = kernel_compute(point, device)
        tracker.log(run_id, tags={"colq.kernel_backend": kernel, "colq.kernel_compute_dtype": compute})

        t0 = time.perf_counter()
        artifact = quantize_point(point, _dirs(point)["models"])
        tracker.log(run_id, tags={"colq.artifact_key": artifact.key, "colq.artifact_reused": str(artifact.reused).lower()})
        manifest = artifact.manifest
        base_dir = resolve_checkpoint_dir(point.model.source, point.model.revision)
        metrics: dict[str, float] = dict(size_report(base_dir, artifact.path))
        for k in ("quant_seconds", "quant_peak_rss_mb", "quant_peak_cuda_mb", "samples_used"):
            if isinstance(manifest.get(k), (int, float)):
                metrics[k] = float(manifest[k])
        metrics["quant_stage_seconds"] = time.perf_counter() - t0

        name = f"colq_sweep/{point.model.name}-w{point.quant.bits}"
        result = _evaluate(point, _load_quantized(point, artifact.path, device), name, eval_revision(artifact.key, point, device),
                           device, force=point.force)  # fmt: skip
        metrics.update(summarise(result.entries))
        metrics.update(eval_metrics(result.timing))
        # The baseline last: points of one model quantize side by side instead of waiting for its evaluation.
        baseline, _ = ensure_baseline(point, tracker, parent_id)
        metrics.update(compare(result.entries, baseline.entries))
        tracker.log(run_id, metrics=metrics, tags={"colq.eval_from_cache": str(result.from_cache).lower(), "colq.baseline_run_id": baseline.run_id})
        _log_results(tracker, run_id, result.entries, result.per_query)
        mpath = tmp / "quantization_manifest.json"
        mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        for a in extra + [mpath] + logs:
            tracker.log_artifact(run_id, a)
        tracker.finish(run_id)
        log.info("point %s / %s FINISHED: avg ndcg@5 %.5f (delta %+.5f)", point.model.name, point.label,
                 metrics["avg_ndcg_at_5_all"], metrics.get("delta_ndcg_at_5_all", float("nan")))  # fmt: skip
        return PointOutcome(point.label, point.model.name, "FINISHED", run_id, metrics)
    except KeyboardInterrupt as exc:
        _fail(tracker, run_id, exc, "KILLED")
        raise
    except BaseException as exc:  # noqa: BLE001 - isolate the failure: record it, let the other points run
        for f in logs:
            try:
                tracker.log_artifact(run_id, f)
            except Exception:  # noqa: BLE001 - the traceback below matters more than the log
                pass
        err = _fail(tracker, run_id, exc)
        log.error("point %s / %s FAILED: %s", point.model.name, point.label, err)
        return PointOutcome(point.label, point.model.name, "FAILED", run_id, {}, err)


def run_point_job(point: SweepPoint, cfg: Any) -> PointOutcome:
    """Hydra job wrapper: finds the multirun's parent run, writes the status file, sets the exit code."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job_dir = Path(hc.runtime.output_dir)
    sweep_id = None
    if multirun:
        from colq_sweep.tracking import sweep_id_for

        sweep_id = sweep_id_for(hc.sweep.dir)
    config_yaml = OmegaConf.to_yaml({k: cfg[k] for k in cfg if k != "hydra"}, resolve=True)
    outcome = run_point(point, sweep_id=sweep_id, config_yaml=config_yaml, log_files=sorted(job_dir.glob("*.log")))
    tmp = job_dir / f".{STATUS_FILE}.tmp"
    tmp.write_text(outcome.to_json())
    tmp.rename(job_dir / STATUS_FILE)
    if not multirun and outcome.status == "FAILED":
        print(f"colq_sweep: point FAILED: {outcome.error}", file=sys.stderr)
        sys.exit(1)
    return outcome
