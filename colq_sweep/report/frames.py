"""The report's CSV files: entries.csv (one row per model, configuration and entry) and summary.csv (one row per
model and configuration), written beside report.md."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from colq_sweep.report.cells import SPEED, sig_of, speed_metric
from colq_sweep.report.html import render_html
from colq_sweep.report.numbers import ModelAnalysis
from colq_sweep.report.points import PointResults


def entries_frame(analyses: list[ModelAnalysis], points: list[PointResults]) -> pd.DataFrame:
    """Long table: one row per (model, configuration, entry) of every finished point, common or not."""
    from colq_sweep.report.points import clean_entries

    rows = []
    for ma in analyses:
        common = {e: i for i, e in enumerate(ma.entry_keys)}
        for c in ma.all_configs:
            df = clean_entries(c.point.entries)
            for r in df.itertuples(index=False):
                i = common.get((r.task, r.subset))
                row = {
                    "model": ma.model, "configuration": c.short, "label": c.point.label, "role": c.point.role,
                    "run_id": c.point.run_id, "benchmark": r.benchmark, "task": r.task, "subset": r.subset,
                    "language": r.language, "common": i is not None,
                    "n_queries": ma.entries["n_queries"].iloc[i] if i is not None else r.n_queries,
                    "ndcg_at_5": r.ndcg_at_5, "ndcg_at_10": r.ndcg_at_10, "main_metric": r.main_metric,
                    "main_score": r.main_score, "original_ndcg_at_5": math.nan, "delta_ndcg_at_5": math.nan,
                    "delta_ci_low": math.nan, "delta_ci_high": math.nan, "significance": "",
                }
                if i is not None and ma.baseline is not None and not c.is_baseline:
                    row["original_ndcg_at_5"] = ma.baseline.scores[i]
                    row["delta_ndcg_at_5"] = c.delta_entry[i]
                    if c.entry_ci is not None:
                        row["delta_ci_low"], row["delta_ci_high"] = c.entry_ci[i]
                        row["significance"] = c.entry_sig[i]
                    else:
                        row["significance"] = "n/a"
                rows.append(row)
    return pd.DataFrame(rows)


def summary_frame(analyses: list[ModelAnalysis]) -> pd.DataFrame:
    """One row per (model, configuration): the numbers of the performance, size and speed tables."""
    rows = []
    for ma in analyses:
        for c in ma.all_configs:
            row = {"model": ma.model, "configuration": c.short, "label": c.point.label, "role": c.point.role,
                   "run_id": c.point.run_id, "n_entries": ma.n_entries, "n_entries_en": ma.n_entries_en,
                   "n_queries": ma.n_queries, "avg_ndcg_at_5_all": c.avg_all, "avg_ndcg_at_5_en": c.avg_en,
                   "delta_all": c.delta_all, "rel_all_pct": c.rel_all, "delta_en": c.delta_en, "rel_en_pct": c.rel_en}
            for name in ("avg_all", "avg_en", "delta_all", "rel_all", "delta_en", "rel_en"):
                lo, hi = c.ci.get(name, (math.nan, math.nan))
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = lo, hi
            row["significance_all"] = sig_of(c) if not c.is_baseline else ""
            sc = c.count_significance()
            row["n_improved_sig"], row["n_degraded_sig"], row["n_not_sig"] = sc if sc else (None, None, None)
            row["n_higher"], row["n_lower"], row["n_equal"] = c.count_direction()
            row["is_best"] = c is ma.best
            row["base_total_bytes"], row["quant_total_bytes"], row["size_reduction_pct"] = (
                c.base_bytes, c.quant_bytes, c.reduction_pct)
            for k, _, _ in SPEED:  # the columns as before the grouped names: quant/seconds -> quant_seconds
                row[CSV_COLUMN.get(k, k.replace("/", "_"))] = speed_metric(c.point, k)
            rows.append(row)
    return pd.DataFrame(rows)


CSV_COLUMN = {"eval/pages_per_s": "pages_per_s", "eval/queries_per_s": "queries_per_s"}


def write_outputs(out_dir: Path, markdown: str, analyses: list[ModelAnalysis], points: list[PointResults]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    entries_frame(analyses, points).to_csv(out_dir / "entries.csv", index=False)
    summary_frame(analyses).to_csv(out_dir / "summary.csv", index=False)
    path = out_dir / "report.md"
    path.write_text(markdown, encoding="utf-8")
    title = next((ln[2:] for ln in markdown.splitlines() if ln.startswith("# ")), "report")
    (out_dir / "report.html").write_text(render_html(markdown, out_dir, title), encoding="utf-8")
    return path
