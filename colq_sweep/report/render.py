"""report.md, entries.csv and summary.csv from the analyses (`analysis.py`)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pandas as pd

from colq_sweep.report import tables as T
from colq_sweep.report.analysis import ConfigStats, ModelAnalysis
from colq_sweep.report.plots import entry_label
from colq_sweep.report.points import PointResults
from colq_sweep.report.stats import CI_LEVEL, significance

MARK = {"improved": "▲", "degraded": "▼", "not significant": "", "n/a": ""}
SPEED = [  # (metric, header, formatter)
    ("quant_seconds", "Quantization time", T.seconds),
    ("quant_peak_rss_mb", "Quant. peak RSS (MB)", T.num),
    ("quant_peak_cuda_mb", "Quant. peak GPU (MB)", T.num),
    ("eval_seconds", "Evaluation time", T.seconds),
    ("pages_per_s", "Pages/s", lambda v: T.num(v, 2)),
    ("queries_per_s", "Queries/s", lambda v: T.num(v, 2)),
    ("eval_peak_rss_mb", "Eval. peak RSS (MB)", T.num),
    ("eval_peak_cuda_mb", "Eval. peak GPU (MB)", T.num),
]
ALIASES = {  # older / alternative metric names, used only when the contract's name is absent
    "quant_seconds": ("quant_wall_time_s",),
    "eval_peak_rss_mb": ("peak_rss_mb",),
    "eval_peak_cuda_mb": ("peak_cuda_mb",),
}


def speed_metric(p: PointResults, key: str) -> float | None:
    for k in (key, *ALIASES.get(key, ())):
        v = p.metric(k)
        if v is not None:
            return v
    return None
PCT = int(round(CI_LEVEL * 100))


def _sig(c: ConfigStats, name: str = "delta_all") -> str:
    lo, hi = c.ci.get(name, (None, None))
    return significance(lo, hi)


def _sig_text(s: str) -> str:
    return {"improved": "yes (improvement)", "degraded": "yes (loss)", "not significant": "no (CI covers 0)",
            "n/a": "n/a"}[s]


def _ci(c: ConfigStats, name: str, kind: str = "delta") -> str:
    lo, hi = c.ci.get(name, (None, None))
    return T.ci(lo, hi, kind)


def _size_text(c: ConfigStats) -> str:
    if c.base_bytes is None and c.quant_bytes is None:
        return T.NA
    return f"{T.nbytes(c.base_bytes)} → {T.nbytes(c.quant_bytes)}"


def _anchor(model: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in model.lower())


# ------------------------------------------------------------------------------------------- sections


def _executive(analyses: list[ModelAnalysis]) -> list[str]:
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
            T.pct(b.rel_all), _ci(b, "rel_all", "pct"), T.delta(b.delta_all), _sig_text(_sig(b)),
            _size_text(b), T.pct(b.reduction_pct, 1, signed=False),
        ])
    out += [T.md_table(["Model", "Entries", "Queries", "Best configuration", "Avg NDCG@5 original → best",
                        "Change", f"{PCT}% CI (change)", "Abs. change", "Significant loss/gain?",
                        "Size before → after", "Size reduction"], rows), ""]
    out += ["Best = highest average NDCG@5 over the model's common entries among its quantized configurations. "
            "Change = (best − original) / original; the interval is the paired query bootstrap interval.", ""]
    for ma in analyses:
        out += [f"- {line}" for line in _recommendation(ma)[:1]]
    out.append("")
    out += _cross_model(analyses)
    return out


def _cross_model(analyses: list[ModelAnalysis]) -> list[str]:
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


def _method(analyses: list[ModelAnalysis], n_boot: int, seed: int) -> list[str]:
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


def _configs_table(ma: ModelAnalysis) -> list[str]:
    varying = ma.design.varying if ma.design else []
    rows = []
    for c in ma.all_configs:
        p = c.point
        rows.append([c.short, T.code(p.label), p.role, T.code(p.run_id or T.NA)]
                    + [p.params.get(k, T.NA) if not c.is_baseline else "-" for k in varying]
                    + [T.code(p.config_hash) if p.config_hash else T.NA])
    return [f"### Configurations — {ma.model}", "",
            T.md_table(["Configuration", "Label", "Role", "Run"] + varying + ["Config hash"], rows), ""]


def _performance(ma: ModelAnalysis) -> list[str]:
    rows = []
    for c in ma.all_configs:
        if c.is_baseline:
            rows.append([c.short, T.score(c.avg_all), "-", "-", "-", "-", T.score(c.avg_en), "-", "-", "-", "-"])
            continue
        rows.append([c.short, T.score(c.avg_all), T.pct(c.rel_all), _ci(c, "rel_all", "pct"), T.delta(c.delta_all),
                     _ci(c, "delta_all"), T.score(c.avg_en), T.pct(c.rel_en), _ci(c, "rel_en", "pct"),
                     T.delta(c.delta_en), _ci(c, "delta_en")])
    out = [f"### Performance — {ma.model}", "",
           f"{ma.n_entries} common entries ({ma.n_entries_en} English), "
           f"{T.NA if ma.n_queries is None else ma.n_queries} queries.", "",
           T.md_table(["Configuration", "Avg NDCG@5 (all)", "Change", f"{PCT}% CI", "Abs. change", f"{PCT}% CI (abs.)",
                       "Avg NDCG@5 (English)", "Change (English)", f"{PCT}% CI (English)", "Abs. change (English)",
                       f"{PCT}% CI (abs., English)"], rows), ""]
    if ma.baseline is None:
        out += ["No finished original (baseline) run for this model: changes cannot be computed.", ""]
    return out


def _entry_level(ma: ModelAnalysis) -> list[str]:
    if ma.baseline is None or not ma.configs:
        return []
    heads = [c.short for c in ma.configs]
    dirs = [c.count_direction() for c in ma.configs]
    sigs = [c.count_significance() for c in ma.configs]
    na = lambda s, i: T.NA if s is None else s[i]  # noqa: E731
    rows = [
        ["Improved significantly"] + [na(s, 0) for s in sigs],
        ["Degraded significantly"] + [na(s, 1) for s in sigs],
        ["Unchanged (not significant)"] + [na(s, 2) for s in sigs],
        ["Higher than original (point estimate)"] + [d[0] for d in dirs],
        ["Lower than original (point estimate)"] + [d[1] for d in dirs],
        ["Equal to original (point estimate)"] + [d[2] for d in dirs],
    ]
    out = [f"### Entry-level changes — {ma.model}", "",
           f"Counts over the {ma.n_entries} common entries. \"Significantly\" = the entry's {PCT}% paired bootstrap "
           "interval excludes 0; \"higher / lower / equal\" compare the point estimates only (as the study did).", "",
           T.md_table(["Entries"] + heads, rows), ""]
    bench_rows = []
    for bench, g in ma.entries.groupby("benchmark", sort=True):
        idx = list(g.index)
        row = [bench, len(idx)]
        for c in ma.configs:
            if c.count_significance() is None:
                d = c.delta_entry[idx]
                row.append(f"{int((d > 0).sum())} / {int((d < 0).sum())} / {int((d == 0).sum())} (point est.)")
            else:
                s = [c.entry_sig[i] for i in idx]
                row.append(f"{s.count('improved')} / {s.count('degraded')} / {s.count('not significant')}")
        bench_rows.append(row)
    out += [f"#### By benchmark — {ma.model}", "", "Improved significantly / degraded significantly / not significant.",
            "", T.md_table(["Benchmark", "Entries"] + heads, bench_rows), ""]
    return out


def _factors(ma: ModelAnalysis) -> list[str]:
    d = ma.design
    if d is None or not d.varying:
        return []
    out = [f"### Factors — {ma.model}", "",
           f"Varying settings among the quantized configurations: {', '.join(f'`{v}`' for v in d.varying)}."]
    for f in d.factors:
        if not f.compound:
            continue
        names = [f"`{p}`" for p in f.params]
        listed = ", ".join(names[:-1]) + f" and {names[-1]}"
        how = "; ".join(h for a, b, h in d.confounded if a in f.params and b in f.params)
        out.append(f"- **Confounded:** {listed} change together in this sweep ({how}): their separate effects "
                   f"cannot be estimated; the table \"Effect of {f.name}\" shows their joint effect.")
    if len(d.factors) > 1:
        names = " × ".join(f"`{f.name}` ({len(f.levels)})" for f in d.factors)
        if d.complete:
            out.append(f"- Crossed design {names}: all {d.n_cells_full} combinations present; each level's effect "
                       "is averaged over the other factors' levels.")
        else:
            out.append(f"- Incomplete design {names}: {d.n_cells} of {d.n_cells_full} combinations present; level "
                       "means average over different combinations, the differences vs the reference level use only "
                       "combinations present at both levels.")
    out.append("")
    if ma.baseline is None:
        return out + ["No original run: factor effects (changes vs the original) cannot be computed.", ""]
    for fe in ma.effects:
        rows = [[r.level, r.n_configs, T.delta(r.mean), T.ci(r.lo, r.hi),
                 "reference" if r.contrast is None and r.level == fe.ref else T.delta(r.contrast), T.ci(r.c_lo, r.c_hi)]
                for r in fe.rows]
        out += [f"#### Effect of {fe.factor.name} — {ma.model}", "",
                T.md_table(["Level", "Configs", "Mean change vs original (abs.)", f"{PCT}% CI",
                            f"Difference vs {fe.ref}", f"{PCT}% CI (difference)"], rows), ""]
    return out


def _seeds(ma: ModelAnalysis) -> list[str]:
    if not ma.seed_groups:
        return []
    rows = [[g.fixed, ", ".join(g.seeds), len(g.members), T.score(g.mean), T.score(g.std), T.score(g.vmin),
             T.score(g.vmax), T.score(g.spread), T.score(g.boot_se)] for g in ma.seed_groups]
    return [f"### Seed replicates — {ma.model}", "",
            "Configurations identical except for the seed: the spread of the average NDCG@5 (all entries) is the "
            "randomness of quantization itself; the last column is the bootstrap standard error of one "
            "configuration's average (query sampling), for comparison.", "",
            T.md_table(["Shared settings", "Seeds", "Runs", "Mean avg NDCG@5", "Std (ddof=1)", "Min", "Max", "Range",
                        "Bootstrap SE"], rows), ""]


def _recommendation(ma: ModelAnalysis) -> list[str]:
    if not ma.configs:
        return [f"`{ma.model}`: no finished quantized configuration."]
    b = ma.best
    if b is None:
        return [f"`{ma.model}`: no quantized configuration has results on the common entries."]
    k = len(ma.configs)
    lines = []
    if ma.baseline is None:
        return [f"`{ma.model}`: best configuration `{b.point.label}` (avg NDCG@5 {T.score(b.avg_all)} over "
                f"{ma.n_entries} entries); no original run to compare with."]
    s = _sig(b)
    head = (f"**`{ma.model}`: use `{b.point.label}`** — the highest average NDCG@5 of {k} quantized "
            f"configuration(s) on {ma.n_entries} common entries: {T.score(b.avg_all)} vs {T.score(ma.baseline.avg_all)} "
            f"for the original, {T.pct(b.rel_all)} ({T.delta(b.delta_all)}; {PCT}% CI {_ci(b, 'rel_all', 'pct')}). ")
    head += {
        "degraded": "The loss is statistically significant (the interval excludes 0): weigh it against the size "
                    "reduction.",
        "improved": "The gain is statistically significant (the interval excludes 0).",
        "not significant": "The change is not statistically significant (the interval covers 0).",
        "n/a": "No interval (no per-query scores): significance unknown.",
    }[s]
    if b.quant_bytes or b.base_bytes:
        head += f" On disk {_size_text(b)} ({T.pct(b.reduction_pct, 1, signed=False)} smaller)."
    lines.append(head)
    sc = b.count_significance()
    if sc is not None:
        lines.append(f"It changes {sc[0]} of {ma.n_entries} entries significantly for the better, {sc[1]} for the "
                     f"worse, and leaves {sc[2]} unchanged (not significant).")
    if ma.indistinguishable:
        names = ", ".join(f"`{c.point.label}`" for c, *_ in ma.indistinguishable)
        lines.append(f"{len(ma.indistinguishable)} other configuration(s) are statistically indistinguishable from it "
                     f"(the interval of the paired difference covers 0): {names}; the data do not rank these.")
    elif ma.boot_ok and len(ma.configs) > 1:
        lines.append("Every other configuration is significantly worse than it.")
    if ma.smaller_alternative is not None:
        a = ma.smaller_alternative
        lines.append(f"Among the configurations indistinguishable from it, `{a.point.label}` is the smallest on disk "
                     f"({T.nbytes(a.quant_bytes)} vs {T.nbytes(b.quant_bytes)}): prefer it where size matters.")
    if ma.seed_groups:
        spread = max(g.spread for g in ma.seed_groups)
        lines.append(f"Seed replicates move the average by up to {T.score(spread)}: differences between "
                     "configurations smaller than that are within the randomness of quantization itself.")
    return lines


def _best_section(ma: ModelAnalysis) -> list[str]:
    if not ma.configs:
        return []
    out = [f"### Best configuration and recommendation — {ma.model}", ""]
    out += [" ".join(_recommendation(ma)), ""]
    b = ma.best
    if b is not None and (ma.indistinguishable or ma.distinguishable):
        rows = [[c.short, T.score(c.avg_all), T.delta(diff), T.ci(lo, hi), "no" if ind else "yes (worse)"
                 if hi < 0 else "yes (better)"]
                for ind, group in ((True, ma.indistinguishable), (False, ma.distinguishable))
                for c, diff, lo, hi in group]
        out += [T.md_table(["Configuration", "Avg NDCG@5", f"Difference vs best ({b.short})", f"{PCT}% CI",
                            "Distinguishable from best?"], rows), ""]
    return out


def _v3(ma: ModelAnalysis) -> list[str]:
    idx = [i for i, bn in enumerate(ma.entries["benchmark"]) if bn == "ViDoRe(v3)"]
    if not idx:
        return []
    confs = ma.all_configs
    rows = []
    for i in idx:
        t, s = ma.entry_keys[i]
        rows.append([entry_label(t, s), ma.entries["language"].iloc[i]] + [T.score(c.ndcg10[i]) for c in confs])
    rows.append(["**Average**", ""] + [T.score(c.ndcg10[idx].mean()) for c in confs])
    return [f"### ViDoRe(v3): official NDCG@10 — {ma.model}", "",
            f"ViDoRe(v3)'s official metric is NDCG@10; its {len(idx)} common entries here (NDCG@5 elsewhere in this report).",
            "", T.md_table(["Entry", "Lang"] + [c.short for c in confs], rows), ""]


def _per_entry(ma: ModelAnalysis) -> list[str]:
    if not ma.n_entries:
        return []
    confs = ma.all_configs
    rows = []
    for i, (t, s) in enumerate(ma.entry_keys):
        rows.append([ma.entries["benchmark"].iloc[i], entry_label(t, s), ma.entries["language"].iloc[i],
                     T.NA if pd.isna(ma.entries["n_queries"].iloc[i]) else int(ma.entries["n_queries"].iloc[i])]
                    + [T.score(c.scores[i]) for c in confs])
    out = [f"### Per-entry NDCG@5 — {ma.model}", "",
           T.md_table(["Benchmark", "Entry", "Lang", "Queries"] + [c.short for c in confs], rows), ""]
    if ma.baseline is None or not ma.configs:
        return out
    rows = []
    for i, (t, s) in enumerate(ma.entry_keys):
        row = [ma.entries["benchmark"].iloc[i], entry_label(t, s)]
        for c in ma.configs:
            cell = T.delta(c.delta_entry[i])
            if c.entry_ci is not None:
                cell += f" {T.ci(*c.entry_ci[i])} {MARK[c.entry_sig[i]]}".rstrip()
            row.append(cell)
        rows.append(row)
    out += [f"### Per-entry change vs original — {ma.model}", "",
            f"Absolute change of NDCG@5 and its {PCT}% paired bootstrap interval; ▲ / ▼ = significant improvement / "
            "degradation.", "", T.md_table(["Benchmark", "Entry"] + [c.short for c in ma.configs], rows), ""]
    return out


def _missing(ma: ModelAnalysis) -> list[str]:
    out = [f"### Entries not common to all configurations — {ma.model}", ""]
    if not ma.missing:
        return out + [f"None: every configuration has all {ma.n_entries} entries.", ""]
    short = {c.key: c.short for c in ma.all_configs}
    rows = [[m.benchmark, entry_label(m.task, m.subset), m.language,
             ", ".join(f"`{short.get(k, k)}`" for k in m.missing_in), m.reason] for m in ma.missing]
    return out + [f"{len(ma.missing)} entries are left out of every average and test of this model, because some "
                  "configuration lacks them:", "",
                  T.md_table(["Benchmark", "Entry", "Lang", "Missing in", "Reason"], rows), ""]


def _notes(ma: ModelAnalysis) -> list[str]:
    return [f"- Note: {n}" for n in ma.notes] + ([""] if ma.notes else [])


def _sizes(analyses: list[ModelAnalysis]) -> list[str]:
    rows = []
    for ma in analyses:
        for c in ma.configs:
            rows.append([T.code(ma.model), c.short, T.nbytes(c.base_bytes), T.nbytes(c.quant_bytes),
                         T.pct(c.reduction_pct, 1, signed=False)])
        if not ma.configs and ma.baseline:
            rows.append([T.code(ma.model), "original", T.nbytes(ma.baseline.base_bytes), T.NA, T.NA])
    return ["## Memory efficiency (on-disk size)", "",
            T.md_table(["Model", "Configuration", "Original size", "Quantized size", "Reduction"], rows), ""]


def _speed(analyses: list[ModelAnalysis]) -> list[str]:
    rows = []
    for ma in analyses:
        for c in ma.all_configs:
            rows.append([T.code(ma.model), c.short] + [f(speed_metric(c.point, k)) for k, _, f in SPEED])
    return ["## Speed and memory", "",
            "From the tracked run metrics (n/a = not recorded). Peak GPU memory is the CUDA allocator peak.", "",
            T.md_table(["Model", "Configuration"] + [h for _, h, _ in SPEED], rows), ""]


def _failed(points: list[PointResults]) -> list[str]:
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
                    n_boot: int, seed: int, meta: dict[str, Any] | None = None, notes: list[str] | None = None) -> str:
    meta = meta or {}
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Quantization report: {title}", ""]
    lines.append(f"Generated {now} by `colq_sweep.report`"
                 + "".join(f"; {k}: `{v}`" for k, v in meta.items() if v is not None) + ".")
    n_fin = sum(p.finished for p in points)
    lines += [f"{n_fin} finished point run(s) used, {len(points) - n_fin} not finished; "
              f"{len(analyses)} model(s); paired bootstrap with {n_boot} replicates (seed {seed}).", ""]
    lines += _executive(analyses)
    lines += _method(analyses, n_boot, seed)
    if notes:
        lines += ["## Data notes", ""] + [f"- {n}" for n in notes] + [""]
    for ma in analyses:
        lines += [f"## Model {ma.model}", ""]
        lines += _notes(ma)
        if not ma.all_configs:
            lines += ["No finished run of this model: see \"Failed and unused runs\".", ""]
            continue
        lines += _configs_table(ma) + _performance(ma) + _entry_level(ma) + _factors(ma) + _seeds(ma)
        lines += _best_section(ma) + _v3(ma) + _missing(ma)
        if plots and ma.model in plots.get("models", {}):
            pm = plots["models"][ma.model]
            lines += [f"### Plots — {ma.model}", "",
                      f"![{ma.model}: NDCG@5 per entry]({pm['comparison'].name})", "",
                      f"![{ma.model}: change vs original per entry]({pm['diff'].name})", ""]
        lines += _per_entry(ma)
    lines += _sizes(analyses) + _speed(analyses)
    if plots and plots.get("avg"):
        lines += ["## Overall comparison", "", f"![Average NDCG@5 per model and configuration]({plots['avg'].name})", "",
                  "Error bars: 95% bootstrap interval of each average by itself (query sampling). Changes vs the "
                  "original are paired and their intervals, in the tables above, are much narrower; overlapping bars "
                  "do not mean a change is not significant.", ""]
    lines += _failed(points)
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------- CSV files


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
            row["significance_all"] = _sig(c) if not c.is_baseline else ""
            sc = c.count_significance()
            row["n_improved_sig"], row["n_degraded_sig"], row["n_not_sig"] = sc if sc else (None, None, None)
            row["n_higher"], row["n_lower"], row["n_equal"] = c.count_direction()
            row["is_best"] = c is ma.best
            row["base_total_bytes"], row["quant_total_bytes"], row["size_reduction_pct"] = (
                c.base_bytes, c.quant_bytes, c.reduction_pct)
            for k, _, _ in SPEED:
                row[k] = speed_metric(c.point, k)
            rows.append(row)
    return pd.DataFrame(rows)


def write_outputs(out_dir: Path, markdown: str, analyses: list[ModelAnalysis], points: list[PointResults]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    entries_frame(analyses, points).to_csv(out_dir / "entries.csv", index=False)
    summary_frame(analyses).to_csv(out_dir / "summary.csv", index=False)
    path = out_dir / "report.md"
    path.write_text(markdown, encoding="utf-8")
    return path
