"""The report section "Against the published study": our numbers beside the study's own, entry by entry.

The study's per-entry NDCG@5 (original and each seqlen, 4B and 8B) and its settings ship as reference data
(`reference/*.csv`, each citing its source). A configuration of ours *matches* one of the study's when it is the
same model (TomoroAI ColQwen3-Embed 4B / 8B) and, for a quantized point, the study's recipe: W4A16, group 128,
sym, iters 1000, NeelNanda/pile-10k, and the study's seqlen with its nsamples and batch size. For each match the
section sets our per-entry and average NDCG@5 beside the study's on the entries both have, with the difference
and whether the study's number lies inside our 95% bootstrap interval (queries resampled within each entry).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from colq_sweep.report import tables as T
from colq_sweep.report.points import PointResults, clean_entries, clean_per_query
from colq_sweep.report.stats import bootstrap_entry_means, percentile_ci

REFERENCE = Path(__file__).with_name("reference")
SOURCE = "goodhamgupta/evaluation, comparison_report_{4B,8B}_all_languages.md @ b6bb8c45c688e859ffd988617063221a16570d74"


@cache
def settings() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "study_settings.csv", comment="#", dtype=str)


@cache
def published(size: str) -> pd.DataFrame:
    """The study's per-entry NDCG@5 for `size` (4b | 8b): task, subset, report_entry, original, seqlen_*."""
    return pd.read_csv(REFERENCE / f"study_{size}.csv", comment="#", dtype={"task": str, "subset": str})


def match(p: PointResults) -> tuple[str, str] | tuple[None, str]:
    """(size, study column) of the study configuration `p` reproduces, or (None, why not)."""
    par = {k: str(v) for k, v in p.params.items()}
    sizes = settings().drop_duplicates("model").set_index("model_id")["model"].to_dict()
    size = sizes.get(par.get("model.id", ""))
    if size is None:
        return None, f"model {par.get('model.id') or p.model} is not one of the study's (TomoroAI ColQwen3-Embed 4B/8B)"
    if p.is_baseline:
        return size, "original"
    rows = settings()[(settings()["model"] == size) & (settings()["seqlen"] == par.get("seqlen"))]
    if rows.empty:
        return None, f"seqlen={par.get('seqlen')} is not one of the study's (256, 512, 1024)"
    want = rows.iloc[0]
    checks = {"nsamples": want["nsamples"], "batch_size": want["batch_size"], "iters": want["iters"],
              "quant.bits": want["bits"], "quant.group_size": want["group_size"], "quant.sym": "True",
              "calib.dataset": want["calibration"]}  # fmt: skip
    for key, value in checks.items():
        if par.get(key) != value:
            return None, f"{key}={par.get(key)} where the study used {value}"
    return size, f"seqlen_{want['seqlen']}"


def _entry_ci(p: PointResults, keys: list[tuple[str, str]], n_boot: int, seed: int):
    """Per-entry and average 95% intervals of `p`'s NDCG@5 over `keys` (None where it has no per-query scores)."""
    pq = clean_per_query(p.per_query)
    groups = {k: g["ndcg_at_5"].to_numpy(dtype=float) for k, g in pq.groupby(["task", "subset"])}
    if not all(k in groups and len(groups[k]) for k in keys):
        return None, None
    reps = bootstrap_entry_means([groups[k][None, :] for k in keys], n_boot, seed)[:, :, 0]  # (B, E)
    lo, hi = percentile_ci(reps, axis=0)
    avg_lo, avg_hi = percentile_ci(reps.mean(axis=1), axis=0)
    return np.stack([lo, hi], axis=1), (float(avg_lo), float(avg_hi))


def section(points: list[PointResults], n_boot: int = 2000, seed: int = 0) -> list[str]:
    out = ["## Against the published study", "",
           f"The study's published per-entry NDCG@5 ({SOURCE}) beside ours, for each configuration of this report that "
           "is one of the study's (same model; W4A16 g128 sym, iters 1000, NeelNanda/pile-10k, the study's seqlen with "
           "its nsamples and batch size). \"Inside\" = the study's number lies in our 95% bootstrap interval.", ""]  # fmt: skip
    # in a fixed order, not the store's (runs of parallel jobs start in any order): the same runs, the same report
    finished = sorted((p for p in points if p.finished), key=lambda p: (p.model, not p.is_baseline, p.label))
    matched, reasons = [], {}
    for p in finished:
        size, col = match(p)
        if size is None:
            reasons.setdefault(col, []).append(f"`{p.model}` `{p.label}`")
        else:
            matched.append((p, size, col))
    if not matched:
        out.append("No configuration of this report matches one of the study's, so nothing is compared:")
        out += [f"- {why}: {', '.join(who[:4])}{' …' if len(who) > 4 else ''}" for why, who in reasons.items()]
        return out + [""]
    for p, size, col in matched:
        ref = published(size)
        ours = clean_entries(p.entries).set_index(["task", "subset"])["ndcg_at_5"]
        both = [(t, s) for t, s in zip(ref["task"], ref["subset"], strict=True) if (t, s) in ours.index]
        if not both:
            out += [f"### `{p.model}` {p.label} vs study {size.upper()} {col}", "", "No entry in common.", ""]
            continue
        study = ref.set_index(["task", "subset"])[col].astype(float)
        cis, avg_ci = _entry_ci(p, both, n_boot, seed)
        rows, inside = [], 0
        for i, k in enumerate(both):
            mine, theirs = float(ours[k]), float(study[k])
            ok = None if cis is None else bool(cis[i, 0] <= theirs <= cis[i, 1])
            inside += bool(ok)
            rows.append([f"{k[0]} / {k[1]}", T.score(theirs), T.score(mine), T.delta(mine - theirs),
                         T.ci(*cis[i], kind="score") if cis is not None else T.NA, T.NA if ok is None else ("yes" if ok else "no")])  # fmt: skip
        s_avg, o_avg = float(np.mean([study[k] for k in both])), float(np.mean([ours[k] for k in both]))
        avg_in = None if avg_ci is None else avg_ci[0] <= s_avg <= avg_ci[1]
        rows.append(["**Average**", T.score(s_avg), T.score(o_avg), T.delta(o_avg - s_avg),
                     T.ci(*avg_ci, kind="score") if avg_ci else T.NA, T.NA if avg_in is None else ("yes" if avg_in else "no")])  # fmt: skip
        name = "original" if col == "original" else col.replace("_", "=")
        out += [f"### `{p.model}` `{p.label}` vs the study's {size.upper()} {name}", "",
                f"{len(both)} entries in common of the study's {len(ref)}; the study's number lies inside our interval on "
                f"{inside} of {len(both)}" + (" (no per-query scores: no intervals)" if cis is None else "") + ".", "",
                T.md_table(["Entry", "Study", "Ours", "Ours − study", "Our 95% CI", "Inside?"], rows), ""]  # fmt: skip
    if reasons:
        out.append("Not compared (no study counterpart): " + "; ".join(f"{why}: {', '.join(w[:3])}" for why, w in reasons.items()))
        out.append("")
    return out
