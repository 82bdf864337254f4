"""The report's statistics written back onto the runs, so the MLflow UI can sort and filter by them.

When a report is built from an experiment (and logged, `build_report(log_to_mlflow=True)`), every compared
configuration's run gets its change's 95 % interval (`ndcg5/delta_all_ci_low/high`, absolute, and
`ndcg5/delta_pct_all_ci_low/high`, percent of the original: the report's paired bootstrap), its significance
(tag `colq.significance`: degraded | improved | not significant | n/a) and `colq.best` (true on the configuration
the report recommends for its model, false on the others: a later report moves it). The parent run (the newest
sweep of the experiment) gets the recommendation as its description (`mlflow.note.content`), the varying settings
as params (`report.levels.<param>` = the levels the report compared, over the experiment; a sweep's own axes are
its `sweep.<param>` params, logged when it starts: track/multirun.py), and per model the best configuration's
numbers (`best/<model>/ndcg5_avg_all`, `best/<model>/ndcg5_delta_pct_all`) and its number of configurations.
An older sweep whose runs the report compared gets the same recommendation as its description, led by a line that
names the run holding the report (unless it has a description of its own, e.g. a search's choice).
"""

from __future__ import annotations

import math

from colq_sweep import contract as R
from colq_sweep.report.cells import sig_of


def run_annotations(analyses) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
    """run id -> (metrics, tags) for every compared configuration of every model."""
    out: dict[str, tuple[dict[str, float], dict[str, str]]] = {}
    for ma in analyses:
        for c in ma.configs:
            if not c.point.run_id:
                continue
            metrics = {}
            for name, prefix in (("delta_all", R.DELTA_CI), ("rel_all", R.DELTA_PCT_CI)):
                lo, hi = c.ci.get(name, (None, None))
                if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                    metrics[f"{prefix}_low"], metrics[f"{prefix}_high"] = float(lo), float(hi)
            tags = {R.SIGNIFICANCE: sig_of(c), R.IS_BEST: str(c is ma.best).lower()}
            out[c.point.run_id] = (metrics, tags)
    return out


def parent_annotations(analyses, description: str) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """(params, metrics, tags) of the experiment's newest sweep run."""
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for ma in analyses:
        design = ma.design
        for p in design.varying if design is not None else []:
            values = {c.point.params.get(p) for c in ma.configs} - {None}  # RTN has no seqlen: not a level
            levels = sorted(map(str, values), key=lambda v: (len(v), v))
            params[f"report.levels.{p}"] = ",".join(levels)[:6000]
        b = ma.best
        if b is not None:
            metrics[f"{R.BEST}{ma.model}/ndcg5_avg_all"] = float(b.avg_all)
            if math.isfinite(b.rel_all):
                metrics[f"{R.BEST}{ma.model}/ndcg5_delta_pct_all"] = float(b.rel_all)
        metrics[f"sweep/{ma.model}/configurations"] = float(len(ma.configs))
    return params, metrics, {R.NOTE: description[:60000]}


ELSEWHERE = "The experiment's report compares this sweep's runs; it is logged on the newest sweep run"


def annotate(tracker, analyses, parent_id: str | None, description: str, older: tuple[str, ...] = ()) -> None:
    """Write both onto the runs (params already logged with another value are left as they are: MLflow params are
    immutable, and a parent keeps the first report's axes); `older` sweeps get the description and a pointer."""
    for run_id, (metrics, tags) in run_annotations(analyses).items():
        tracker.log(run_id, metrics=metrics, tags=tags)
    if parent_id is None:
        return
    params, metrics, tags = parent_annotations(analyses, description)
    have = tracker.client.get_run(parent_id).data.params
    tracker.log(parent_id, params={k: v for k, v in params.items() if k not in have}, metrics=metrics, tags=tags)
    for run_id in older:
        own = tracker.client.get_run(run_id).data.tags.get(R.NOTE)
        if own is None or own.startswith(ELSEWHERE):  # a description of the sweep's own is kept
            note = f"{ELSEWHERE} (`{parent_id}`, artifacts `report/`).\n\n{description}"
            tracker.log(run_id, tags={R.NOTE: note[:60000]})
