"""MLflow runs of an experiment -> `PointResults` (the data contract of the sweep orchestrator).

Point runs carry the tag `colq.role` (baseline | quantized); sweep (parent) runs carry `colq.role=sweep`.
Per model, quantized points are de-duplicated by (config hash, eval hash), keeping the latest FINISHED run;
the model's original is a FINISHED baseline run with the same `colq.model` and, preferably, the `colq.eval_hash`
most of its quantized points share; it may live in this experiment or, failing that, in any experiment of the
store. Runs that did not finish are returned as such (listed as failed, never used for numbers).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from colq_sweep.contract import (  # the contract the sweep writes
    BASELINE_REF,
    DEVICE_NAME,
    ENTRIES_ARTIFACT,
    ERROR,
    EVAL_HASH,
    FINISHED,
    KERNEL_BACKEND,
    LABEL,
    MODEL,
    PARENT,
    PER_QUERY_ARTIFACT,
    ROLE,
)
from colq_sweep.contract import RUN_KEY as CONFIG_HASH
from colq_sweep.report.points import PointResults


class ReportError(RuntimeError):
    """A report cannot be built (no experiment, no store, no runs): `str(err)` is the one line to show."""


@dataclass
class Loaded:
    points: list[PointResults]
    parent_run_id: str | None
    notes: list[str] = field(default_factory=list)
    searches: list[dict] = field(default_factory=list)  # report/search.py: the newest record of each search
    other_sweeps: list[str] = field(default_factory=list)  # older sweep runs, parents of compared points


# what runs logged before these settings existed had: the uncompressed index, a 16-bit vision tower, and (for a
# point that calibrated: one that logged calib.* params) text calibration
INDEX_DEFAULTS = {"index.pool_factor": "1", "index.dtype": "bf16", "quant.vision": "False"}
CALIB_DEFAULTS = {"calib.kind": "text", "calib.queries_share": "0.0"}


def _params(params: dict[str, str]) -> dict[str, str]:
    p = _set(params)
    calibrated = any(k.startswith("calib.") for k in p)  # RTN and the original log none: no calibration to fill in
    return {**INDEX_DEFAULTS, **(CALIB_DEFAULTS if calibrated else {}), **p}


def _set(params: dict[str, str]) -> dict[str, str]:
    """A run's params less the unset ones that stores written before 2026-12 logged as 'None' or '' (runs now log
    only the settings that are set: config/specs.py SweepPoint.params), so old and new runs compare alike."""
    return {k: v for k, v in params.items() if v not in ("None", "")}


def _all_runs(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _csv(client, run_id: str, path: str, tmp: Path) -> pd.DataFrame | None:
    try:
        local = client.download_artifacts(run_id, path, str(tmp))
    except Exception:  # noqa: BLE001 - a missing artifact is reported, not fatal
        return None
    try:
        return pd.read_csv(local, dtype={"task": str, "subset": str, "query_id": str, "language": str})
    except Exception:  # noqa: BLE001
        return None


def _point(client, run, tmp: Path, notes: list[str]) -> PointResults:
    tags, info = run.data.tags, run.info
    p = PointResults(
        model=tags.get(MODEL, "?"), label=tags.get(LABEL, info.run_name or info.run_id), role=tags.get(ROLE, "?"),
        params=_params(run.data.params), metrics=dict(run.data.metrics), run_id=info.run_id, status=info.status,
        config_hash=tags.get(CONFIG_HASH, ""), eval_hash=tags.get(EVAL_HASH, ""), start_time=info.start_time,
        error=tags.get(ERROR, ""), kernel=tags.get(KERNEL_BACKEND, ""), device=tags.get(DEVICE_NAME, ""),
    )
    if p.finished:
        d = tmp / info.run_id
        d.mkdir(parents=True, exist_ok=True)
        ent = _csv(client, info.run_id, ENTRIES_ARTIFACT, d)
        pq = _csv(client, info.run_id, PER_QUERY_ARTIFACT, d)
        if ent is None:
            notes.append(f"run {info.run_id} ({p.model} / {p.label}) has no {ENTRIES_ARTIFACT}")
        else:
            p.entries = ent
        if pq is None:
            notes.append(f"run {info.run_id} ({p.model} / {p.label}) has no {PER_QUERY_ARTIFACT}")
        else:
            p.per_query = pq
    return p


@contextmanager
def quiet_downloads():
    """No per-file download progress bars (unless the user asked for them explicitly)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _latest(runs: list) -> list:
    return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)


def _split_by_original(client, model: str, refs: list[str], chosen: list, group_of: dict, notes: list) -> bool:
    """One model's points were compared with different originals (e.g. another dtype or page-resolution cap):
    each original and its points become their own group, named by the model settings that differ, so that
    no point is ever compared with an original it was not made from. Returns False if an original is gone."""
    originals = {}
    for ref in refs:
        try:
            originals[ref] = client.get_run(ref)
        except Exception:  # noqa: BLE001 - a deleted run: fall back to one group (noted by the caller's logic)
            notes.append(f"{model}: original run {ref} referenced by its points no longer exists")
            return False
    params = {ref: _set(r.data.params) for ref, r in originals.items()}
    # settings every original logged (an old store's runs logged speed-only knobs too, which tell nothing apart)
    keys = sorted(set.intersection(*({k for k in p if k.startswith(("model.", "eval."))} for p in params.values())))
    differing = [k for k in keys if len({p[k] for p in params.values()}) > 1] or ["run"]
    for ref, base in originals.items():
        label = ", ".join(f"{k}={params[ref].get(k, ref[:8])}" for k in differing)
        group = f"{model} [{label}]"
        group_of[ref] = group
        for r in chosen:
            if r.data.tags.get(MODEL) == model and r.data.tags.get(BASELINE_REF) == ref:
                group_of[r.info.run_id] = group
        chosen.append(base)
    notes.append(f"{model}: its points were compared with {len(refs)} different originals (differing in "
                 f"{', '.join(differing)}); each is reported as its own group")  # fmt: skip
    return True


def load_experiment(name: str, tracking_uri: str) -> Loaded:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ReportError(f"no MLflow experiment named {name!r} at {tracking_uri}")
    runs = _all_runs(client, [exp.experiment_id])
    notes: list[str] = []
    sweeps = _latest([r for r in runs if r.data.tags.get(ROLE) == "sweep"])
    if not sweeps:  # fall back to any run that is some run's parent
        parent_ids = {r.data.tags.get(PARENT) for r in runs} - {None}
        sweeps = _latest([r for r in runs if r.info.run_id in parent_ids])
    parent = sweeps[0].info.run_id if sweeps else None

    point_runs = [r for r in runs if r.data.tags.get(ROLE) in ("baseline", "quantized")]
    chosen = _latest_quantized(point_runs, notes)
    models = sorted({r.data.tags.get(MODEL) for r in point_runs if r.data.tags.get(MODEL)})
    group_of: dict[str, str] = {}  # run id -> comparison group, when one model has several originals
    for model in list(models):
        refs = sorted({r.data.tags.get(BASELINE_REF) for r in chosen
                       if r.data.tags.get(MODEL) == model and r.data.tags.get(BASELINE_REF)})  # fmt: skip
        if len(refs) > 1 and _split_by_original(client, model, refs, chosen, group_of, notes):
            models.remove(model)
    for model in models:
        pick = _original_of(client, model, point_runs, chosen, notes)
        if pick is not None:
            chosen.append(pick)

    unfinished = [r for r in point_runs if r.info.status != FINISHED]
    with tempfile.TemporaryDirectory(prefix="colq-report-") as tmp, quiet_downloads():
        points = [_point(client, r, Path(tmp), notes) for r in chosen + unfinished]
        from colq_sweep.report.search import load_searches

        searches = load_searches(client, runs, Path(tmp))
    for p in points:
        p.model = group_of.get(p.run_id, p.model)
    points.sort(key=lambda p: (p.model, p.role != "baseline", p.start_time or 0))
    compared = {p.run_id for p in points}
    parents = {c.data.tags.get(PARENT) for c in point_runs if c.info.run_id in compared}
    others = [r.info.run_id for r in sweeps[1:] if r.info.run_id in parents]
    return Loaded(points=points, parent_run_id=parent, notes=notes, searches=searches, other_sweeps=others)


def _latest_quantized(point_runs: list, notes: list[str]) -> list:
    """The newest FINISHED quantized run of each configuration (model, run key, entries asked for)."""
    finished_q: dict[tuple, object] = {}
    for r in _latest([r for r in point_runs if r.data.tags.get(ROLE) == "quantized"]):
        if r.info.status != FINISHED:
            continue
        t = r.data.tags
        finished_q.setdefault((t.get(MODEL), t.get(CONFIG_HASH) or r.info.run_id, t.get(EVAL_HASH)), r)
    chosen = list(finished_q.values())
    n_dup = sum(1 for r in point_runs if r.data.tags.get(ROLE) == "quantized" and r.info.status == FINISHED) - len(chosen)
    if n_dup:
        notes.append(f"{n_dup} older finished run(s) of an already reported configuration were left out")
    return chosen


def _original_of(client, model: str, point_runs: list, chosen: list, notes: list[str]):
    """The original a model's configurations are compared with: the one they name, else one with their eval hash,
    else the newest (from another experiment if this one has none)."""
    eval_hashes = Counter(r.data.tags.get(EVAL_HASH) for r in chosen if r.data.tags.get(MODEL) == model)
    cands = _latest([r for r in point_runs if r.data.tags.get(ROLE) == "baseline" and r.info.status == FINISHED
                     and r.data.tags.get(MODEL) == model])  # fmt: skip
    if not cands:
        filt = f"tags.`{ROLE}` = 'baseline' and tags.`{MODEL}` = '{model}' and attributes.status = 'FINISHED'"
        all_ids = [e.experiment_id for e in client.search_experiments()]
        cands = _latest(_all_runs(client, all_ids, filt))
        if cands:
            notes.append(f"{model}: the original (baseline) run {cands[0].info.run_id} comes from another experiment")
    if not cands:
        notes.append(f"{model}: no finished original (baseline) run found")
        return None
    refs = Counter(r.data.tags.get(BASELINE_REF) for r in chosen
                   if r.data.tags.get(MODEL) == model and r.data.tags.get(BASELINE_REF))  # fmt: skip
    for ref, _ in refs.most_common():
        pick = next((r for r in cands if r.info.run_id == ref), None)
        if pick is not None:
            return pick
    for h, _ in eval_hashes.most_common():
        pick = next((r for r in cands if r.data.tags.get(EVAL_HASH) == h), None)
        if pick is not None:
            return pick
    if eval_hashes:
        notes.append(f"{model}: no original run with the eval hash of its quantized runs; using "
                     f"{cands[0].info.run_id} (eval hash {cands[0].data.tags.get(EVAL_HASH)})")
    return cands[0]
