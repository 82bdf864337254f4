"""From `PointResults` to the numbers of the report (pure: pandas + numpy, no MLflow, no plotting).

Per model: the common entries (the intersection over the model's configurations, original included, of the
entries with an NDCG@5 and, where per-query scores exist, with shared query ids), the entries that are not
common (listed, never silently dropped), every configuration's averages and changes vs the original on the
common entries, the paired query bootstrap (`stats.py`), entry-level significance, the sweep's design
(factors, confounding, per-level effects), seed replicates, the best configuration and the recommendation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from colq_sweep import contract as R
from colq_sweep.report import stats
from colq_sweep.report.numbers import (
    ConfigStats,
    EffectRow,
    EntryKey,
    FactorEffect,
    MissingEntry,
    ModelAnalysis,
    SeedGroup,
)
from colq_sweep.report.points import PointResults, clean_entries, clean_per_query, is_english

EXCLUDE_EXACT = {
    "name", "outputs_dir", "device", "force", "fail_point", "tracking_uri", "system_metrics", "quant.backend",
    "quant.low_gpu_mem_usage", "quant.enable_torch_compile", "quant.allow_fewer_samples",
    "quant.scheme",  # W4A16G32 is quant.bits and quant.group_size written together: those two are the factors
}  # fmt: skip
EXCLUDE_PREFIX = ("model.", "eval.", "hydra.", "colq.", "calib.pages.")  # a page source is named by calib.kind
PREFERRED = ["quant.method", "quant.algorithms", "quant.recipe", "quant.bits", "quant.group_size", "quant.sym", "seqlen",
             "batch_size", "nsamples", "iters", "seed", "quant.format", "calib.kind", "calib.pages_share", "calib.queries_share", "quant.vision",
             "quant.vision_scheme", "index.pool_factor", "index.dtype"]
SHORT = {"batch_size": "bs", "nsamples": "n", "quant.bits": "bits", "quant.group_size": "group",
         "quant.sym": "sym", "quant.format": "format", "quant.scheme": "scheme", "quant.algorithms": "method",
         "quant.recipe": "recipe", "index.pool_factor": "pool", "index.dtype": "index", "quant.method": "quant",
         "calib.kind": "calib", "quant.vision": "vision", "calib.pages_share": "pages", "calib.queries_share": "queries"}


def factor_candidates(params: list[dict]) -> list[str]:
    keys = {k for p in params for k in p}
    keys = {k for k in keys if k not in EXCLUDE_EXACT and not k.startswith(EXCLUDE_PREFIX)}
    return [k for k in PREFERRED if k in keys] + sorted(keys - set(PREFERRED))


def _unique_keys(points: list[PointResults]) -> list[str]:
    keys = [p.label or p.run_id or "?" for p in points]
    counts = {k: keys.count(k) for k in keys}
    out = []
    for p, k in zip(points, keys, strict=True):
        out.append(f"{k} [{(p.run_id or p.config_hash or str(id(p)))[:8]}]" if counts[k] > 1 else k)
    return out


def _short_labels(points: list[PointResults], varying: list[str], keys: list[str]) -> list[str]:
    shorts = []
    for p, k in zip(points, keys, strict=True):
        if varying:
            shorts.append(" ".join(f"{SHORT.get(v, v)}={p.params.get(v, 'n/a')}" for v in varying))
        else:
            shorts.append(k)
    if len(set(shorts)) < len(shorts):
        return keys
    return shorts


def _order_key(p: PointResults, cands: list[str]) -> tuple:
    return tuple(stats._sort_key(str(p.params.get(k, ""))) for k in cands) + (p.label,)


def _size_fields(p: PointResults, base_fallback: float | None) -> tuple[float | None, float | None, float | None]:
    if p.is_baseline:
        return p.metric(R.TOTAL_BYTES) or base_fallback, None, None
    q = p.metric(R.TOTAL_BYTES)
    # no original beside it: the original's own weights (behind a compressed index)
    b = p.metric(R.ORIGINAL_TOTAL_BYTES) or (q if q is not None else base_fallback)
    if b and q:
        return b, q, (1.0 - q / b) * 100.0
    return b, q, p.metric("size/weights_reduction_pct")


def analyze_model(model: str, points: list[PointResults], n_boot: int = 2000, seed: int = 0) -> ModelAnalysis:
    """All numbers of one model (only FINISHED points are used): order the configurations, find the entries all of
    them have, then each configuration's averages and changes, the bootstrap, the design's effects, the best."""
    notes: list[str] = []
    base, quantized, cands = _configurations(points, notes)
    ordered = ([base] if base else []) + quantized
    if not ordered:
        return ModelAnalysis(model, n_boot, seed, None, [], pd.DataFrame(
            columns=["task", "subset", "benchmark", "language", "english", "n_queries"]), [], notes)
    keys = _unique_keys(ordered)
    design = stats.detect_design([p.params for p in quantized], cands) if len(quantized) > 1 else None
    shorts = (["original"] if base else []) + _short_labels(quantized, design.varying if design else [], keys[1 if base else 0:])
    ent = {k: clean_entries(p.entries) for k, p in zip(keys, ordered, strict=True)}
    pq = {k: clean_per_query(p.per_query) for k, p in zip(keys, ordered, strict=True)}
    common, missing, meta = _common_entries(keys, ent)
    boot_keys = _bootstrap_participants(keys, pq, base is not None, notes)
    qmaps = {k: {e: dict(zip(g["query_id"].tolist(), g["ndcg_at_5"].to_numpy(dtype=float).tolist(), strict=True))
                 for e, g in pq[k].groupby(["task", "subset"])} for k in boot_keys}
    qids = _shared_queries(common, boot_keys, qmaps, meta, missing, notes)
    order = sorted(common, key=lambda e: (meta[e][0], e[0], e[1]))
    missing.sort(key=lambda m: (m.benchmark, m.task, m.subset))
    entries = _entry_table(order, meta, qids if boot_keys else None, ent[keys[0]])
    en_mask = entries["english"].to_numpy(dtype=bool)
    cs = _config_stats(keys, shorts, ordered, ent, order, en_mask, set(boot_keys))
    bstats = cs[0] if base else None
    if bstats is not None:
        _deltas(bstats, cs[1:])
    ma = ModelAnalysis(model, n_boot, seed, bstats, cs[1:] if base else cs, entries, missing, notes, design)
    if boot_keys and order:
        _bootstrap(ma, [c for c in cs if c.boot], qmaps, order, qids, en_mask)
    _design_effects(ma)
    _seed_groups(ma, cands)
    _best(ma)
    return ma


def _configurations(points: list[PointResults], notes: list[str]):
    """(the original, the quantized configurations in factor order, the factor candidates)."""
    finished = [p for p in points if p.finished]
    baselines = sorted([p for p in finished if p.is_baseline], key=lambda p: -(p.start_time or 0))
    base = baselines[0] if baselines else None
    if len(baselines) > 1:
        notes.append(f"{len(baselines)} finished original (baseline) runs were given; the latest "
                     f"({base.run_id or base.label}) is used.")
    quantized = [p for p in finished if not p.is_baseline]
    cands = factor_candidates([p.params for p in quantized])
    quantized.sort(key=lambda p: _order_key(p, cands))
    return base, quantized, cands


def _common_entries(keys: list[str], ent: dict[str, pd.DataFrame]):
    """(entries every configuration has, the others as MissingEntry rows, entry -> (benchmark, language))."""
    sets = {k: set(zip(df["task"], df["subset"], strict=True)) for k, df in ent.items()}
    union = set().union(*sets.values())
    common = set.intersection(*sets.values())
    meta: dict[EntryKey, tuple[str, str]] = {}
    for k in keys:
        for r in ent[k].itertuples(index=False):
            meta.setdefault((r.task, r.subset), (r.benchmark, r.language))
    missing = [MissingEntry(e[0], e[1], *meta[e], [k for k in keys if e not in sets[k]], "no NDCG@5 in results/entries.csv")
               for e in sorted(union - common)]  # fmt: skip
    return common, missing, meta


def _bootstrap_participants(keys: list[str], pq: dict[str, pd.DataFrame], has_base: bool, notes: list[str]) -> list[str]:
    """The original and every configuration with per-query scores (none without an original that has them)."""
    if has_base and len(pq[keys[0]]):
        for k in keys[1:]:
            if not len(pq[k]):
                notes.append(f"`{k}` has no per-query scores: no confidence intervals for it.")
        return [keys[0]] + [k for k in keys[1:] if len(pq[k])]
    if has_base:
        notes.append("The original has no per-query scores: no confidence intervals for this model.")
    return []


def _shared_queries(common: set, boot_keys: list[str], qmaps, meta, missing: list[MissingEntry], notes: list[str]):
    """entry -> the query ids every bootstrap participant has; entries without per-query scores or shared queries
    leave `common` for `missing`."""
    qids: dict[EntryKey, list[str]] = {}
    n_trimmed = 0
    for e in sorted(common):
        lacking = [k for k in boot_keys if e not in qmaps[k]]
        if lacking:
            common.discard(e)
            missing.append(MissingEntry(e[0], e[1], *meta[e], lacking, "no per-query scores in results/per_query.csv"))
            continue
        if boot_keys:
            sets_q = [set(qmaps[k][e]) for k in boot_keys]
            shared = set.intersection(*sets_q)
            if not shared:
                common.discard(e)
                missing.append(MissingEntry(e[0], e[1], *meta[e], boot_keys, "no query id shared by all configurations"))
                continue
            if any(len(s) != len(shared) for s in sets_q):
                n_trimmed += 1
            qids[e] = sorted(shared)
    if n_trimmed:
        notes.append(f"{n_trimmed} common entries have query ids missing in some configuration; the bootstrap "
                     "uses the queries shared by all configurations.")
    return qids


def _entry_table(order: list[EntryKey], meta, qids: dict | None, first: pd.DataFrame) -> pd.DataFrame:
    entries = pd.DataFrame({
        "task": [e[0] for e in order], "subset": [e[1] for e in order],
        "benchmark": [meta[e][0] for e in order], "language": [meta[e][1] for e in order],
    })
    entries["english"] = entries["language"].map(is_english).astype(bool)
    if qids is not None:
        entries["n_queries"] = [len(qids[e]) for e in order]
    else:
        ref = first.set_index(["task", "subset"])["n_queries"]
        entries["n_queries"] = [ref.get(e, math.nan) for e in order]
    return entries


def _config_stats(keys, shorts, ordered, ent, order, en_mask, boot_keys: set) -> list[ConfigStats]:
    base_bytes_fallback = None
    for p in ordered:
        b = p.metric(R.TOTAL_BYTES) if p.is_baseline else p.metric(R.ORIGINAL_TOTAL_BYTES)
        if b:
            base_bytes_fallback = b
            break
    cs: list[ConfigStats] = []
    for k, s, p in zip(keys, shorts, ordered, strict=True):
        df = ent[k].set_index(["task", "subset"])
        sc = np.array([df.at[e, "ndcg_at_5"] for e in order], dtype=float)
        n10 = np.array([df.at[e, "ndcg_at_10"] for e in order], dtype=float)
        c = ConfigStats(point=p, key=k, short=s, scores=sc, ndcg10=n10)
        c.avg_all = float(sc.mean()) if len(sc) else math.nan
        c.avg_en = float(sc[en_mask].mean()) if en_mask.any() else math.nan
        c.base_bytes, c.quant_bytes, c.reduction_pct = _size_fields(p, base_bytes_fallback)
        c.boot = k in boot_keys
        cs.append(c)
    return cs


def _deltas(bstats: ConfigStats, configs: list[ConfigStats]) -> None:
    for c in configs:
        c.delta_entry = c.scores - bstats.scores
        c.delta_all = c.avg_all - bstats.avg_all
        c.delta_en = c.avg_en - bstats.avg_en
        c.rel_all = c.delta_all / bstats.avg_all * 100.0 if bstats.avg_all else math.nan
        c.rel_en = c.delta_en / bstats.avg_en * 100.0 if bstats.avg_en else math.nan


def _bootstrap(ma: ModelAnalysis, bcs: list[ConfigStats], qmaps, order, qids, en_mask) -> None:
    values = [np.array([[qmaps[c.key][e][q] for q in qids[e]] for c in bcs], dtype=float) for e in order]
    r = stats.bootstrap_entry_means(values, ma.n_boot, ma.seed)  # (B, E, C)
    a_all = r.mean(axis=1)
    a_en = r[:, en_mask, :].mean(axis=1) if en_mask.any() else None
    ma.boot_ok = True
    ma.boot_avg = a_all
    ma.boot_cols = {c.key: j for j, c in enumerate(bcs)}
    for j, c in enumerate(bcs):
        pq_means = np.array([v[j].mean() for v in values])
        c.pq_max_abs_diff = float(np.max(np.abs(pq_means - c.scores)))
        c.ci["avg_all"] = tuple(map(float, stats.percentile_ci(a_all[:, j])))
        if a_en is not None:
            c.ci["avg_en"] = tuple(map(float, stats.percentile_ci(a_en[:, j])))
        c.se_avg_all = float(a_all[:, j].std(ddof=1))
        if j == 0:
            continue
        d_all = a_all[:, j] - a_all[:, 0]
        c.ci["delta_all"] = tuple(map(float, stats.percentile_ci(d_all)))
        with np.errstate(divide="ignore", invalid="ignore"):
            c.ci["rel_all"] = tuple(map(float, stats.percentile_ci(d_all / a_all[:, 0] * 100.0)))
        if a_en is not None:
            d_en = a_en[:, j] - a_en[:, 0]
            c.ci["delta_en"] = tuple(map(float, stats.percentile_ci(d_en)))
            with np.errstate(divide="ignore", invalid="ignore"):
                c.ci["rel_en"] = tuple(map(float, stats.percentile_ci(d_en / a_en[:, 0] * 100.0)))
        lo, hi = stats.percentile_ci(r[:, :, j] - r[:, :, 0], axis=0)
        c.entry_ci = np.column_stack([lo, hi])
        c.entry_sig = [stats.significance(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def _delta_reps(ma: ModelAnalysis) -> np.ndarray | None:
    """(B, K) replicate changes of the average over all common entries, NaN columns for configs outside it."""
    if not ma.boot_ok:
        return None
    a_all, cols = ma.boot_avg, ma.boot_cols
    out = np.full((a_all.shape[0], len(ma.configs)), np.nan)
    for i, c in enumerate(ma.configs):
        if c.key in cols:
            out[:, i] = a_all[:, cols[c.key]] - a_all[:, 0]
    return out


def _linear(w: np.ndarray, points: np.ndarray, reps: np.ndarray | None) -> tuple[float, float | None, float | None]:
    used = w != 0
    est = float(w[used] @ points[used])
    if reps is None or np.isnan(reps[:, used]).any():
        return est, None, None
    lo, hi = stats.percentile_ci(reps[:, used] @ w[used])
    return est, float(lo), float(hi)


def _design_effects(ma: ModelAnalysis) -> None:
    if ma.design is None or not ma.design.factors or ma.baseline is None:
        return
    n = len(ma.configs)
    pts = np.array([c.delta_all for c in ma.configs])
    reps = _delta_reps(ma)
    for f in ma.design.factors:
        lw = stats.level_weights(ma.design, f, n)
        ref = f.levels[0]
        rows = []
        for lv in f.levels:
            est, lo, hi = _linear(lw[lv], pts, reps)
            if lv == ref:
                ce = clo = chi = None
            else:
                cw = stats.contrast_weights(ma.design, f, lv, ref, n)
                ce, clo, chi = _linear(cw, pts, reps) if cw is not None else (None, None, None)
            rows.append(EffectRow(stats.Factor.level_text(f.params, lv), int(sum(v == lv for v in f.values)),
                                  est, lo, hi, ce, clo, chi))
        ma.effects.append(FactorEffect(f, stats.Factor.level_text(f.params, ref), rows))


def _seed_groups(ma: ModelAnalysis, cands: list[str]) -> None:
    if "seed" not in cands:
        return
    others = [k for k in cands if k != "seed"]
    groups: dict[tuple, list[ConfigStats]] = {}
    for c in ma.configs:
        groups.setdefault(tuple(str(c.point.params.get(k, "n/a")) for k in others), []).append(c)
    for key, members in groups.items():
        seeds = [str(c.point.params.get("seed", "n/a")) for c in members]
        if len(members) < 2 or len(set(seeds)) < 2:
            continue
        vals = np.array([c.avg_all for c in members])
        varying = ma.design.varying if ma.design else []
        fixed = ", ".join(f"{k}={v}" for k, v in zip(others, key, strict=True) if k in varying) or "all other settings"
        ses = [c.se_avg_all for c in members if c.se_avg_all is not None]
        ma.seed_groups.append(SeedGroup(fixed, members, seeds, float(vals.mean()), float(vals.std(ddof=1)),
                                        float(vals.min()), float(vals.max()),
                                        float(np.mean(ses)) if ses else None))


def _best(ma: ModelAnalysis) -> None:
    cands = [c for c in ma.configs if math.isfinite(c.avg_all)]
    if not cands:
        return
    best = max(cands, key=lambda c: (c.avg_all, -(c.quant_bytes or math.inf)))
    ma.best = best
    if not ma.boot_ok or best.key not in ma.boot_cols:
        return
    a_all, cols = ma.boot_avg, ma.boot_cols
    for c in ma.configs:
        if c is best or c.key not in cols:
            continue
        lo, hi = stats.percentile_ci(a_all[:, cols[c.key]] - a_all[:, cols[best.key]])
        row = (c, c.avg_all - best.avg_all, float(lo), float(hi))
        (ma.indistinguishable if stats.covers_zero(lo, hi) else ma.distinguishable).append(row)
    pool = [best] + [r[0] for r in ma.indistinguishable]
    sized = [c for c in pool if c.quant_bytes]
    if best.quant_bytes and sized:
        smallest = min(sized, key=lambda c: c.quant_bytes)
        if smallest.quant_bytes < 0.99 * best.quant_bytes:
            ma.smaller_alternative = smallest


def analyze(points: list[PointResults], n_boot: int = 2000, seed: int = 0) -> list[ModelAnalysis]:
    """One `ModelAnalysis` per model, models in order of first appearance."""
    models: dict[str, list[PointResults]] = {}
    for p in points:
        models.setdefault(p.model, []).append(p)
    return [analyze_model(m, ps, n_boot=n_boot, seed=seed) for m, ps in models.items()]
