"""Comparison report of a quantization sweep: `python -m colq_sweep.report --name <experiment>`.

Layers: `points` (PointResults, the input), `analysis` + `stats` (every number, pure numpy/pandas),
`tables` / `render` (report.md, entries.csv, summary.csv), `plots` (PNG, Agg), `load` (MLflow runs ->
PointResults) and `build` (the entry points).
"""

from colq_sweep.report.analysis import ModelAnalysis, analyze
from colq_sweep.report.build import ReportError, build_report, build_report_from_points
from colq_sweep.report.points import PointResults

__all__ = ["ModelAnalysis", "PointResults", "ReportError", "analyze", "build_report", "build_report_from_points"]
