"""report.md as a whole: title and provenance, executive summary, method, the per-model sections (sections.py),
sizes, speed and memory, plots, and the runs that did not finish."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from colq_sweep import contract as R
from colq_sweep.report import tables as T
from colq_sweep.report.cells import PCT, SPEED, ci_text, sig_of, sig_words, size_text, speed_metric
from colq_sweep.report.decide import section_across
from colq_sweep.report.numbers import ModelAnalysis
from colq_sweep.report.points import PointResults
from colq_sweep.report.published import section as published_section
from colq_sweep.report.sections import (
    section_best,
    section_configs,
    section_entry_level,
    section_factors,
    section_missing,
    section_notes,
    section_per_entry,
    section_performance,
    section_recommendation,
    section_seeds,
    section_v3,
)


def section_executive(analyses: list[ModelAnalysis]) -> list[str]:
    out = ["## Executive summary", ""]
    rows = []
    for ma in analyses:
        b = ma.best
        if b is None:
            rows.append([T.code(ma.model), ma.n_entries, ma.n_queries, "no quantized run finished", T.NA, T.NA, T.NA, T.NA,
                         T.NA, T.NA, T.NA])
            continue
        base = ma.baseline
        rows.append([
            T.code(ma.model), ma.n_entries, T.NA if ma.n_queries is None else ma.n_queries, T.code(b.point.label),
            f"{T.score(base.avg_all if base else None)} → {T.score(b.avg_all)}",
            T.pct(b.rel_all), ci_text(b, "rel_all", "pct"), T.delta(b.delta_all), sig_words(sig_of(b)),
            size_text(b), T.pct(b.reduction_pct, 1, signed=False),
        ])
    out += [T.md_table(["Model", "Entries", "Queries", "Best configuration", "Avg NDCG@5 original → best",
                        "Change", f"{PCT}% CI (change)", "Abs. change", "Significant loss/gain?",
                        "Size before → after", "Size reduction"], rows), ""]
    out += ["Best = highest average NDCG@5 over the model's common entries among its quantized configurations. "
            "Change = (best − original) / original; the interval is the paired query bootstrap interval.", ""]
    for ma in analyses:
        out += [f"- {line}" for line in section_recommendation(ma)[:1]]
    out.append("")
    out += section_cross_model(analyses)
    return out


def section_cross_model(analyses: list[ModelAnalysis]) -> list[str]:
    with_entries = [ma for ma in analyses if ma.n_entries]
    if len(with_entries) < 2:
        return []
    sets = {ma.model: set(ma.entry_keys) for ma in with_entries}
    shared = set.intersection(*sets.values())
    if all(s == shared for s in sets.values()):
        return [f"All {len(with_entries)} models are compared over the same {len(shared)} entries.", ""]
    counts = ", ".join(f"`{m}` {len(s)}" for m, s in sets.items())
    out = [f"**Warning: the models' entry sets differ** ({counts} entries; {len(shared)} shared). Their averages "
           "are over different entries and are not directly comparable across models; the table below "
           "restricts every model to the shared entries.", ""]
    if shared:
        rows = []
        for ma in with_entries:
            idx = [i for i, e in enumerate(ma.entry_keys) if e in shared]
            base = ma.baseline
            b = ma.best
            avg_o = base.scores[idx].mean() if base else math.nan
            avg_b = b.scores[idx].mean() if b else math.nan
            rel = (avg_b - avg_o) / avg_o * 100 if base and b and avg_o else math.nan
            rows.append([T.code(ma.model), len(idx), T.score(avg_o), T.code(b.point.label) if b else T.NA,
                         T.score(avg_b), T.pct(rel)])
        out += ["### Models on their shared entries", "",
                T.md_table(["Model", "Shared entries", "Original avg NDCG@5", "Best configuration", "Best avg NDCG@5",
                            "Change"], rows), ""]
    return out


def section_method(analyses: list[ModelAnalysis], n_boot: int, seed: int) -> list[str]:
    out = ["## Method and reading guide", ""]
    per_model = "; ".join(
        f"`{ma.model}`: {ma.n_entries} entries ({ma.n_entries_en} English), "
        f"{T.NA if ma.n_queries is None else ma.n_queries} queries, {len(ma.configs)} quantized configuration(s)"
        for ma in analyses)
    out += [
        f"- Scope: {per_model}.",
        "- An entry is one (task, subset) pair of the evaluation. Every configuration of a model, the original "
        "included, is compared on the identical set of entries: the intersection of the entries they all have "
        "(section \"Entries not common to all configurations\" lists the rest; they are in no average).",
        "- Avg NDCG@5 = mean over the common entries of each entry's NDCG@5 (results/entries.csv). English = the "
        "common entries whose language is English. Change = configuration − original (absolute) and "
        "(configuration − original) / original (relative).",
        f"- Intervals: {PCT}% percentile intervals of a paired bootstrap over queries, {n_boot} replicates, "
        f"seed {seed}: within each entry the queries are resampled with replacement, the same resampled queries "
        "for the original and every configuration; a replicate's average is the mean over entries of its "
        "per-entry means (as the headline average).",
        "- \"Unchanged\" / \"not significant\" means the interval of the change covers 0; \"improved\" / "
        "\"degraded\" significantly means the whole interval is above / below 0. Entry-level tests are not "
        f"corrected for multiple comparisons: with no real change about {100 - PCT}% of entries would still be "
        "flagged by chance.",
        "- Best configuration = highest average NDCG@5 among the quantized ones; configurations whose paired "
        "difference to the best has an interval covering 0 are statistically indistinguishable from it.",
        "- Sizes are on-disk totals in decimal units (1 GB = 10^9 bytes); reduction = 1 − quantized / original.",
    ]
    small = [(ma.model, int((ma.entries["n_queries"] < 20).sum())) for ma in analyses if ma.n_entries and ma.boot_ok]
    small = [(m, k) for m, k in small if k]
    if small:
        out.append("- Caution: bootstrap intervals are unreliable for entries with fewer than 20 queries ("
                   + ", ".join(f"`{m}`: {k} entries" for m, k in small) + ").")
    for ma in analyses:
        for c in ma.all_configs:
            if c.pq_max_abs_diff is not None and c.pq_max_abs_diff > 1e-4:
                out.append(f"- Consistency: for `{ma.model}` / `{c.key}` the mean of the per-query NDCG@5 differs "
                           f"from results/entries.csv by up to {c.pq_max_abs_diff:.5f} on an entry; averages use "
                           "entries.csv, intervals use the per-query scores.")
    out.append("")
    return out


def _index_cells(c, weights: float | None) -> list[str]:
    """Index per page, the index of the evaluated corpora, weights + that index, and weights + a million pages."""
    per_page, total = c.point.metric(R.INDEX_BYTES_PER_PAGE), c.point.metric(R.INDEX_TOTAL_BYTES)
    vectors = c.point.metric("index/vectors_per_page")
    page = f"{T.nbytes(per_page)} ({vectors:.0f} vectors)" if per_page is not None and vectors is not None else T.NA
    both = weights + total if weights is not None and total is not None else None
    million = weights + 1e6 * per_page if weights is not None and per_page is not None else None
    return [page, T.nbytes(total), T.nbytes(both), T.nbytes(million)]


def _vision_cell(c, baseline: bool = False, others: list = ()) -> str:
    """The vision tower's part of the weights, and how much of its parameters are quantized (quant.vision); the
    original's as its quantized points measured it (`others`)."""
    v = c.point.metric("size/vision_bytes") if not baseline else next(
        (o.point.metric("size/original_vision_bytes") for o in others if o.point.metric("size/original_vision_bytes")), None)
    if v is None:
        return T.NA
    pct = 0.0 if baseline else (c.point.metric("params/vision_quantized_pct") or 0.0)
    return f"{T.nbytes(v)} ({pct:.0f}% quantized)" if pct else f"{T.nbytes(v)} (16-bit)"


def section_sizes(analyses: list[ModelAnalysis]) -> list[str]:
    rows = []
    for ma in analyses:
        if ma.baseline:
            b = ma.baseline
            rows.append([T.code(ma.model), b.short, "-", "-", T.nbytes(b.base_bytes), T.NA, T.NA, _vision_cell(b, True, ma.configs)]
                        + _index_cells(b, b.base_bytes))  # fmt: skip
        for c in ma.configs:
            weights = c.quant_bytes if c.quant_bytes is not None else c.base_bytes
            lo, hi = c.ci.get("delta_all", (None, None))
            ci = f"[{lo:+.5f}, {hi:+.5f}]" if lo is not None else T.NA
            rows.append([T.code(ma.model), c.short, f"{c.delta_all:+.5f}", ci, T.nbytes(c.base_bytes),
                         T.nbytes(c.quant_bytes), T.pct(c.reduction_pct, 1, signed=False), _vision_cell(c)]
                        + _index_cells(c, weights))  # fmt: skip
    return ["## Memory efficiency (on-disk size)", "",
            "Weights on disk, and the index a deployment serves from: what `index.pool_factor` and `index.dtype` store "
            "per page (evaluate/index.py: int8 with its scales, binary packed 8 dimensions a byte), for the corpora "
            "evaluated here and for a million pages like them. Vision tower: its part of the weights (16-bit unless "
            "quant.vision=true quantized its blocks). Deployment memory = weights + index. Change = avg NDCG@5 "
            "vs the original (weights and index uncompressed), with its 95% paired bootstrap interval.", "",
            T.md_table(["Model", "Configuration", "Change (abs.)", "95% CI", "Original size", "Quantized size", "Reduction", "Vision tower", "Index per page",
                        "Index (evaluated corpora)", "Deployment memory", "Per million pages"], rows), ""]  # fmt: skip


def section_speed(analyses: list[ModelAnalysis]) -> list[str]:
    rows = []
    for ma in analyses:
        for c in ma.all_configs:
            kernel = "16-bit" if c.is_baseline else (c.point.kernel or T.NA)
            rows.append([T.code(ma.model), c.short, kernel] + [f(speed_metric(c.point, k)) for k, _, f in SPEED])
    return ["## Speed and memory", "",
            "From the tracked run metrics (n/a = not recorded). Peak GPU memory is the CUDA allocator peak. Kernels: what "
            "evaluated the quantized weights (`dequant` = unpacked to 16-bit weights: exact, no speed or memory gain, "
            "used where no real kernel serves the scheme).", "",
            T.md_table(["Model", "Configuration", "Kernels"] + [h for _, h, _ in SPEED], rows), ""]


def section_failed(points: list[PointResults]) -> list[str]:
    out = ["## Failed and unused runs", ""]
    bad = [p for p in points if not p.finished]
    if not bad:
        return out + ["No failed runs.", ""]
    done = {(p.model, p.role, p.config_hash or p.label) for p in points if p.finished}
    rows = []
    for p in bad:
        started = (dt.datetime.fromtimestamp(p.start_time / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                   if p.start_time else T.NA)
        sup = "yes" if (p.model, p.role, p.config_hash or p.label) in done else "no"
        err = (p.error[:160] + "…") if len(p.error) > 160 else (p.error or T.NA)
        rows.append([T.code(p.model), T.code(p.label), p.role, p.status, T.code(p.run_id or T.NA), started, sup, err])
    return out + [f"{len(bad)} run(s) did not finish; none of their numbers are used.", "",
                  T.md_table(["Model", "Label", "Role", "Status", "Run", "Started", "Same config finished in another run?",
                              "Error"], rows), ""]


def render_markdown(analyses: list[ModelAnalysis], points: list[PointResults], plots: dict | None, *, title: str,
                    n_boot: int, seed: int, meta: dict[str, Any] | None = None, notes: list[str] | None = None,
                    across=None, answer=None, searches=()) -> str:
    meta = meta or {}
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Quantization report: {title}", ""]
    lines.append(f"Generated {now} by `colq_sweep.report`"
                 + "".join(f"; {k}: `{v}`" for k, v in meta.items() if v is not None) + ".")
    n_fin = sum(p.finished for p in points)
    lines += [f"{n_fin} finished point run(s) used, {len(points) - n_fin} not finished; "
              f"{len(analyses)} model(s); paired bootstrap with {n_boot} replicates (seed {seed}).", ""]
    lines += section_executive(analyses)
    if across is not None:
        lines += section_across(across, answer, (plots or {}).get("frontier"))
    from colq_sweep.report.search import section_searches

    lines += section_searches(list(searches))
    lines += section_method(analyses, n_boot, seed)
    if notes:
        lines += ["## Data notes", ""] + [f"- {n}" for n in notes] + [""]
    for ma in analyses:
        lines += [f"## Model {ma.model}", ""]
        lines += section_notes(ma)
        if not ma.all_configs:
            lines += ["No finished run of this model: see \"Failed and unused runs\".", ""]
            continue
        lines += section_configs(ma) + section_performance(ma) + section_entry_level(ma) + section_factors(ma) + section_seeds(ma)
        lines += section_best(ma) + section_v3(ma) + section_missing(ma)
        if plots and ma.model in plots.get("models", {}):
            pm = plots["models"][ma.model]
            lines += [f"### Plots — {ma.model}", "",
                      f"![{ma.model}: NDCG@5 per entry]({pm['comparison'].name})", "",
                      f"![{ma.model}: change vs original per entry]({pm['diff'].name})", ""]
        lines += section_per_entry(ma)
    lines += section_sizes(analyses) + section_speed(analyses)
    lines += published_section(points, n_boot=n_boot, seed=seed)
    if plots and plots.get("avg"):
        lines += ["## Overall comparison", "", f"![Average NDCG@5 per model and configuration]({plots['avg'].name})", "",
                  "Error bars: 95% bootstrap interval of each average by itself (query sampling). Changes vs the "
                  "original are paired and their intervals, in the tables above, are much narrower; overlapping bars "
                  "do not mean a change is not significant.", ""]
    lines += section_failed(points)
    return "\n".join(lines).rstrip() + "\n"
