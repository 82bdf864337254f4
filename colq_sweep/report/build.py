"""The report's entry points: `build_report_from_points` (pure) and `build_report` (MLflow in, MLflow out)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from colq_sweep.report.analysis import analyze
from colq_sweep.report.budget import Answer, Budget, answer
from colq_sweep.report.frontier import analyze_across
from colq_sweep.report.load import ReportError
from colq_sweep.report.points import PointResults

log = logging.getLogger("colq_sweep.report")
REPORT_ARTIFACT_PATH = "report"
OUTPUT_FILES = ("report.md", "report.html", "entries.csv", "summary.csv", "frontier.csv", "pairs.csv")


def build_report_from_points(points: list[PointResults], out_dir: str | Path, *, title: str = "sweep",
                             n_boot: int = 2000, seed: int = 0, plots: bool = True,
                             meta: dict[str, Any] | None = None, notes: list[str] | None = None,
                             budget: Budget | None = None, pages: float | None = None) -> Path:
    """Analyse `points`, write report.md, entries.csv, summary.csv, frontier.csv, pairs.csv and the PNG plots into
    `out_dir`.

    meta: provenance shown under the title; notes: data notes (e.g. from the MLflow loader) shown in the report;
    budget: the deployer's constraints (report/budget.py), answered in the decision; pages: the page count the
    index memory of the frontier is for (default: the evaluated corpora).
    Returns the path of report.md. Deterministic for a given (points, n_boot, seed) apart from the timestamp.
    """
    return _build(points, out_dir, title=title, n_boot=n_boot, seed=seed, plots=plots, meta=meta, notes=notes,
                  budget=budget, pages=pages)[0]


def _build(points, out_dir, *, title, n_boot, seed, plots, meta, notes, budget, pages,
           searches=()) -> tuple[Path, Answer | None, list]:  # fmt: skip
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("performance_*.png"), *(out / n for n in OUTPUT_FILES)]:
        stale.unlink(missing_ok=True)  # a previous report's files would otherwise be logged with this one
    analyses = analyze(points, n_boot=n_boot, seed=seed)
    across = analyze_across(analyses, n_boot=n_boot, seed=seed, pages=pages)
    ans = answer(across, budget) if budget is not None and budget.given else None
    figs = None
    if plots:
        from colq_sweep.report.plots import make_plots

        figs = make_plots(analyses, out, across)
    from colq_sweep.report.decide import write_frames
    from colq_sweep.report.frames import write_outputs
    from colq_sweep.report.markdown import render_markdown

    md = render_markdown(analyses, points, figs, title=title, n_boot=n_boot, seed=seed, meta=meta, notes=notes,
                         across=across, answer=ans, searches=searches)
    write_frames(out, across)
    return write_outputs(out, md, analyses, points), ans, analyses


def build_report(name: str, tracking_uri: str | None = None, outputs_dir: str | Path = "outputs",
                 out_dir: str | Path | None = None, log_to_mlflow: bool = True, n_boot: int = 2000,
                 seed: int = 0, plots: bool = True, budget: Budget | None = None, pages: float | None = None,
                 mteb_export: bool = False) -> Path:
    """Report of MLflow experiment `name` into out_dir (default <outputs_dir>/reports/<name>/).

    Unless log_to_mlflow is False, the report folder is logged as artifacts (under `report/`) to the latest
    sweep (parent) run of the experiment. budget/pages: as build_report_from_points. mteb_export: also lay out
    every finished run's mteb results under <out_dir>/mteb/ (report/mteb_export.py). Returns the path of
    report.md. Raises ReportError when the store or experiment does not exist or holds no point runs.
    """
    return report_of(name, tracking_uri, outputs_dir, out_dir, log_to_mlflow, n_boot, seed, plots, budget, pages,
                     mteb_export)[0]


def report_of(name, tracking_uri, outputs_dir, out_dir, log_to_mlflow, n_boot, seed, plots, budget, pages,
              mteb_export) -> tuple[Path, Answer | None]:
    """build_report, returning the budget's answer too (the command line prints it)."""
    from colq_sweep.report.load import load_experiment
    from colq_sweep.track.store import resolve_tracking_uri

    uri = resolve_tracking_uri(outputs_dir, tracking_uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise ReportError(f"no MLflow store at {db} (run a sweep first, or pass --tracking-uri)")
    out = Path(out_dir) if out_dir is not None else Path(outputs_dir) / "reports" / name
    loaded = load_experiment(name, uri)
    if not loaded.points:
        raise ReportError(f"experiment {name!r} has no point runs (tag colq.role=baseline|quantized)")
    meta = {"experiment": name, "tracking URI": uri, "sweep run": loaded.parent_run_id}
    for n in loaded.notes:
        log.warning("report: %s", n)
    path, ans, analyses = _build(loaded.points, out, title=name, n_boot=n_boot, seed=seed, plots=plots, meta=meta,
                       notes=loaded.notes, budget=budget, pages=pages, searches=loaded.searches)
    if mteb_export:
        from colq_sweep.report.mteb_export import export

        export(loaded.points, uri, out / "mteb")
    if log_to_mlflow:
        if loaded.parent_run_id is None:
            log.warning("report: experiment %r has no sweep (parent) run; the report is not logged to MLflow", name)
        else:
            from mlflow import MlflowClient

            from colq_sweep.track.store import store_lock

            with store_lock(uri):  # sweeps may be writing to the same sqlite store
                MlflowClient(tracking_uri=uri).log_artifacts(loaded.parent_run_id, str(out), REPORT_ARTIFACT_PATH)
        _annotate(uri, name, analyses, loaded.parent_run_id, tuple(loaded.other_sweeps))
    return path, ans


def _annotate(uri: str, name: str, analyses, parent_id: str | None, older: tuple[str, ...] = ()) -> None:
    """The report's intervals, significance and best onto the runs; the recommendation onto the parent."""
    from colq_sweep.report.annotate import annotate
    from colq_sweep.report.sections import section_recommendation
    from colq_sweep.track.store import Tracker

    description = "\n\n".join(" ".join(section_recommendation(ma)) for ma in analyses)
    annotate(Tracker(uri, name), analyses, parent_id, description, older)
