"""Comparison report of a quantization sweep: `python -m colq_sweep.report --name <experiment>`.

    load.py      MLflow runs -> PointResults (reads the contract in colq_sweep/contract.py); ReportError
    points.py    PointResults: one sweep point's entries and per-query scores, typed
    analysis.py  every number per model (common entries, deltas, bootstrap intervals, factors, the best)
    numbers.py   what that analysis holds (ModelAnalysis, ConfigStats, ...), read by the sections and plots
    stats.py     the bootstrap, intervals, designs and factor contrasts (pure numpy)
    markdown.py  report.md as a whole; sections.py its per-model sections; cells.py / tables.py formatting
    frames.py    entries.csv and summary.csv
    plots.py     the PNG plots (Agg)
    build.py     the entry points: build_report_from_points (pure) and build_report (MLflow in, MLflow out)
"""

from colq_sweep.report.analysis import analyze
from colq_sweep.report.build import build_report, build_report_from_points
from colq_sweep.report.load import ReportError
from colq_sweep.report.numbers import ModelAnalysis
from colq_sweep.report.points import PointResults

__all__ = ["ModelAnalysis", "PointResults", "ReportError", "analyze", "build_report", "build_report_from_points"]
