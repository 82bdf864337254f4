"""The per-model sections of report.md: configurations, performance, entry-level counts, factor effects, seeds,
the best configuration and its recommendation, ViDoRe v3's NDCG@10, per-entry scores, missing entries."""

from __future__ import annotations

import pandas as pd

from colq_sweep.report import tables as T
from colq_sweep.report.cells import MARK, PCT, ci_text, sig_of, size_text
from colq_sweep.report.numbers import ModelAnalysis
from colq_sweep.report.plots import entry_label


def section_configs(ma: ModelAnalysis) -> list[str]:
    varying = ma.design.varying if ma.design else []
    rows = []
    for c in ma.all_configs:
        p = c.point
        rows.append([c.short, T.code(p.label), p.role, T.code(p.run_id or T.NA)]
                    + [p.params.get(k, T.NA) if not c.is_baseline else "-" for k in varying]
                    + [T.code(p.config_hash) if p.config_hash else T.NA])
    return [f"### Configurations — {ma.model}", "",
            T.md_table(["Configuration", "Label", "Role", "Run"] + varying + ["Config hash"], rows), ""]


def section_performance(ma: ModelAnalysis) -> list[str]:
    rows = []
    for c in ma.all_configs:
        if c.is_baseline:
            rows.append([c.short, T.score(c.avg_all), "-", "-", "-", "-", T.score(c.avg_en), "-", "-", "-", "-"])
            continue
        rows.append([c.short, T.score(c.avg_all), T.pct(c.rel_all), ci_text(c, "rel_all", "pct"), T.delta(c.delta_all),
                     ci_text(c, "delta_all"), T.score(c.avg_en), T.pct(c.rel_en), ci_text(c, "rel_en", "pct"),
                     T.delta(c.delta_en), ci_text(c, "delta_en")])
    out = [f"### Performance — {ma.model}", "",
           f"{ma.n_entries} common entries ({ma.n_entries_en} English), "
           f"{T.NA if ma.n_queries is None else ma.n_queries} queries.", "",
           T.md_table(["Configuration", "Avg NDCG@5 (all)", "Change", f"{PCT}% CI", "Abs. change", f"{PCT}% CI (abs.)",
                       "Avg NDCG@5 (English)", "Change (English)", f"{PCT}% CI (English)", "Abs. change (English)",
                       f"{PCT}% CI (abs., English)"], rows), ""]
    if ma.baseline is None:
        out += ["No finished original (baseline) run for this model: changes cannot be computed.", ""]
    return out


def section_entry_level(ma: ModelAnalysis) -> list[str]:
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


def section_factors(ma: ModelAnalysis) -> list[str]:
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


def section_seeds(ma: ModelAnalysis) -> list[str]:
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


def section_recommendation(ma: ModelAnalysis) -> list[str]:
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
    s = sig_of(b)
    head = (f"**`{ma.model}`: use `{b.point.label}`** — the highest average NDCG@5 of {k} quantized "
            f"configuration(s) on {ma.n_entries} common entries: {T.score(b.avg_all)} vs {T.score(ma.baseline.avg_all)} "
            f"for the original, {T.pct(b.rel_all)} ({T.delta(b.delta_all)}; {PCT}% CI {ci_text(b, 'rel_all', 'pct')}). ")
    head += {
        "degraded": "The loss is statistically significant (the interval excludes 0): weigh it against the size "
                    "reduction.",
        "improved": "The gain is statistically significant (the interval excludes 0).",
        "not significant": "The change is not statistically significant (the interval covers 0).",
        "n/a": "No interval (no per-query scores): significance unknown.",
    }[s]
    if b.quant_bytes or b.base_bytes:
        head += f" On disk {size_text(b)} ({T.pct(b.reduction_pct, 1, signed=False)} smaller)."
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


def section_best(ma: ModelAnalysis) -> list[str]:
    if not ma.configs:
        return []
    out = [f"### Best configuration and recommendation — {ma.model}", ""]
    out += [" ".join(section_recommendation(ma)), ""]
    b = ma.best
    if b is not None and (ma.indistinguishable or ma.distinguishable):
        rows = [[c.short, T.score(c.avg_all), T.delta(diff), T.ci(lo, hi), "no" if ind else "yes (worse)"
                 if hi < 0 else "yes (better)"]
                for ind, group in ((True, ma.indistinguishable), (False, ma.distinguishable))
                for c, diff, lo, hi in group]
        out += [T.md_table(["Configuration", "Avg NDCG@5", f"Difference vs best ({b.short})", f"{PCT}% CI",
                            "Distinguishable from best?"], rows), ""]
    return out


def section_v3(ma: ModelAnalysis) -> list[str]:
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


def section_per_entry(ma: ModelAnalysis) -> list[str]:
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


def section_missing(ma: ModelAnalysis) -> list[str]:
    out = [f"### Entries not common to all configurations — {ma.model}", ""]
    if not ma.missing:
        return out + [f"None: every configuration has all {ma.n_entries} entries.", ""]
    short = {c.key: c.short for c in ma.all_configs}
    rows = [[m.benchmark, entry_label(m.task, m.subset), m.language,
             ", ".join(f"`{short.get(k, k)}`" for k in m.missing_in), m.reason] for m in ma.missing]
    return out + [f"{len(ma.missing)} entries are left out of every average and test of this model, because some "
                  "configuration lacks them:", "",
                  T.md_table(["Benchmark", "Entry", "Lang", "Missing in", "Reason"], rows), ""]


def section_notes(ma: ModelAnalysis) -> list[str]:
    return [f"- Note: {n}" for n in ma.notes] + ([""] if ma.notes else [])
