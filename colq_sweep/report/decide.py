"""The deployer's section of report.md (across models, the frontier, the decision) and its CSV files: frontier.csv
(one row per configuration of the experiment) and pairs.csv (every pair of configurations, with its interval)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from colq_sweep.report import tables as T
from colq_sweep.report.budget import Answer, tradeoff
from colq_sweep.report.frontier import RECOVERY_FLAG, SPEED_TOL, Candidate, CrossAnalysis
from colq_sweep.report.plots import entry_label


def _ci(ci: tuple[float, float] | None, digits: int = 4) -> str:
    return T.NA if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _recovery(c: Candidate) -> str:
    if c.is_original:
        return "1 (original)"
    if c.recovery is None:
        return f"{T.NA} (no original)"
    flag = " ⚑" if c.recovery < RECOVERY_FLAG else ""
    return f"{c.recovery:.4f} {_ci(c.recovery_ci)}{flag}"


def _device_weights(c: Candidate) -> str:
    if c.weights_device_mb is None:
        return T.NA
    where = c.device or "?"
    return f"{T.nbytes(c.weights_device_mb * 2**20)} ({'GPU' if where != 'cpu' else 'CPU'})"


def _status(c: Candidate, ca: CrossAnalysis) -> str:
    if c.status == "frontier":
        return "**frontier**"
    if c.status == "n/a":
        return f"{T.NA} (memory unknown)"
    d, lo, hi = c.relation_diff
    ci = f", CI [{lo:+.4f}, {hi:+.4f}]" if lo is not None else ""
    word = "tied with" if c.status == "tied" else "dominated by"
    return f"{word} `{c.relation.name}` ({d:+.4f}{ci})"


def section_across(ca: CrossAnalysis, ans: Answer | None, plot: Path | None) -> list[str]:
    if not ca.candidates:
        return []
    out = ["## Across models: the frontier and the decision", ""]
    n_models = len(ca.models)
    out.append(f"Every configuration of the {n_models} model(s), originals included, on the {len(ca.entries)} entries "
               "all of them have" + (f" ({len(ca.dropped)} left out: listed below)." if ca.dropped else " (none left out)."))
    out += ["Intervals: one paired query bootstrap over every configuration of the experiment (the same tasks, so the "
            f"same queries; {ca.n_boot} replicates, seed {ca.seed}). Recovery = configuration / its model's original on "
            f"these entries (⚑ = below {RECOVERY_FLAG}, llm-compressor's convention). Memory = weights on disk + the "
            + (f"index of {ca.pages:,.0f} pages (`--pages`)" if ca.pages is not None else "index of the evaluated corpora")
            + f"; {ca.speed_note}. Frontier = no other configuration is at least as good on quality, memory"
            + (" and speed" if ca.speed_device else "") + " and better on one" + (f" (speeds within {SPEED_TOL:.0%} count as equal)" if ca.speed_device else "")
            + "; *tied* = beaten only by frontier points "
            "whose quality gain is within the interval. Weights (device) = the loaded model's tensors where it was evaluated "
            "(n/a: no model was loaded, all from caches, or the run predates the metric); Index n/a: the run logged no "
            "index metrics.", ""]
    if ca.shared_label:
        out += [f"Every quantized configuration has `{ca.shared_label}`: the names below give the rest of its label.", ""]
    out += [f"- Note: {n}" for n in ca.notes] + ([""] if ca.notes else [])
    rows = []
    for c in sorted(ca.candidates, key=lambda c: (c.memory_bytes if c.memory_bytes is not None else math.inf, -c.avg)):
        rows.append([T.code(c.name), T.score(c.avg, 4), _ci(c.ci), T.score(c.avg10_v3, 4) if c.avg10_v3 is not None else T.NA,
                     _recovery(c), T.nbytes(c.weights_bytes), _device_weights(c), T.nbytes(c.index_bytes),
                     T.nbytes(c.memory_bytes), T.num(c.pages_per_s, 2), T.num(c.queries_per_s, 2), c.device or T.NA,
                     _status(c, ca)])  # fmt: skip
    out += [T.md_table(["Configuration", "Avg NDCG@5", "95% CI", "NDCG@10 (v3)", "Recovery [95% CI]", "Weights (disk)",
                        "Weights (device)", "Index", "Memory", "Pages/s", "Queries/s", "Device", "Status"], rows), ""]  # fmt: skip
    out += _pairs_table(ca)
    if plot is not None:
        out += [f"![Quality vs memory across models]({plot.name})", ""]
    out += ["### Decision", ""]
    out += [" ".join(ans.lines) if ans is not None and ans.budget.given else " ".join(tradeoff(ca)), ""]
    if ca.dropped:
        rows = [[entry_label(*e), ", ".join(f"`{m}`" for m in models)] for e, models in ca.dropped]
        out += ["#### Entries not shared by every model", "", "Left out of every number of this section:", "",
                T.md_table(["Entry", "Not in the comparison set of"], rows), ""]
    return out


def _pairs_table(ca: CrossAnalysis) -> list[str]:
    """A larger model's quantized configurations against a smaller model's original."""
    rows = []
    originals = [c for c in ca.candidates if c.is_original and c.weights_bytes]
    for small in sorted(originals, key=lambda c: c.weights_bytes):
        for c in ca.candidates:
            o = c.original
            if c.is_original or o is None or c.model == small.model or not o.weights_bytes or o.weights_bytes <= small.weights_bytes:
                continue
            d, lo, hi = ca.diff(c, small)
            sig = T.NA if lo is None else ("better" if lo > 0 else "worse" if hi < 0 else "not distinguishable")
            rows.append([T.code(c.name), T.code(small.name), f"{d:+.4f}", _ci(None if lo is None else (lo, hi)), sig,
                         f"{T.nbytes(c.memory_bytes)} vs {T.nbytes(small.memory_bytes)}"])
    if not rows:
        return []
    return ["### A larger model quantized vs a smaller model's original", "",
            T.md_table(["Configuration", "vs original", "Difference (avg NDCG@5)", "95% CI", "Verdict", "Memory"], rows), ""]


def frontier_frame(ca: CrossAnalysis) -> pd.DataFrame:
    rows = []
    for c in ca.candidates:
        lo, hi = c.ci or (math.nan, math.nan)
        rlo, rhi = c.recovery_ci or (math.nan, math.nan)
        rows.append({"model": c.model, "configuration": c.config.short, "name": c.name, "label": c.config.point.label,
                     "role": c.config.point.role, "run_id": c.config.point.run_id, "n_entries": len(ca.entries),
                     "avg_ndcg_at_5": c.avg, "avg_ci_low": lo, "avg_ci_high": hi, "avg_ndcg_at_10_v3": c.avg10_v3,
                     "recovery": 1.0 if c.is_original else c.recovery, "recovery_ci_low": rlo, "recovery_ci_high": rhi,
                     "weights_bytes": c.weights_bytes, "weights_device_mb": c.weights_device_mb,
                     "index_bytes": c.index_bytes, "memory_bytes": c.memory_bytes, "pages_per_s": c.pages_per_s,
                     "queries_per_s": c.queries_per_s, "device": c.device, "status": c.status,
                     "relation": c.relation.name if c.relation else ""})  # fmt: skip
    return pd.DataFrame(rows)


def pairs_frame(ca: CrossAnalysis) -> pd.DataFrame:
    rows = []
    for a in ca.candidates:
        for b in ca.candidates:
            if a is b:
                continue
            d, lo, hi = ca.diff(a, b)
            rows.append({"a": a.name, "b": b.name, "difference": d, "ci_low": lo, "ci_high": hi,
                         "memory_a": a.memory_bytes, "memory_b": b.memory_bytes})
    return pd.DataFrame(rows)


def write_frames(out_dir: Path, ca: CrossAnalysis) -> None:
    frontier_frame(ca).to_csv(out_dir / "frontier.csv", index=False)
    pairs_frame(ca).to_csv(out_dir / "pairs.csv", index=False)
