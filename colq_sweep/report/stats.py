"""Numeric primitives of the report: the paired query bootstrap and the analysis of a sweep's design.

Bootstrap protocol (documented so that anyone can recompute it):
for one model, `rng = numpy.random.default_rng(seed)`; the model's common entries are visited in report order
(sorted by benchmark, task, subset); for entry e with n_e common queries (sorted query ids) one call
`rng.integers(0, n_e, size=(n_boot, n_e))` draws the resample indices, which are shared by every
configuration of the model (paired). Replicate b of an entry's score is the mean of the resampled per-query
NDCG@5; replicate b of an average is the mean over entries of the replicate entry scores (the average over
entries of per-entry means, as the headline average). Intervals are percentile intervals
(`numpy.percentile`, linear interpolation).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CI_LEVEL = 0.95
ZERO_TOL = 1e-12


def bootstrap_entry_means(values: Sequence[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """Paired bootstrap of per-entry means.

    values[e]: array (C, n_e) of per-query scores of C configurations on the same n_e queries of entry e.
    Returns R of shape (n_boot, E, C): R[b, e, c] = mean of config c's scores over resample b of entry e,
    the resample (indices) being the same for every c.
    """
    rng = np.random.default_rng(seed)
    n_entries = len(values)
    n_conf = values[0].shape[0] if n_entries else 0
    out = np.empty((n_boot, n_entries, n_conf), dtype=float)
    for e, v in enumerate(values):
        v = np.asarray(v, dtype=float)
        n = v.shape[1]
        if n == 0:
            raise ValueError(f"entry {e} has no queries to resample")
        idx = rng.integers(0, n, size=(n_boot, n))
        offsets = np.arange(n_boot, dtype=np.int64)[:, None] * n
        counts = np.bincount((idx + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n)
        out[:, e, :] = counts @ v.T / n
    return out


def percentile_ci(samples: np.ndarray, axis: int = 0, level: float = CI_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along `axis` (NaN-free input)."""
    a = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(samples, [a, 100.0 - a], axis=axis)
    return lo, hi


def covers_zero(lo: float, hi: float) -> bool:
    return bool(lo <= ZERO_TOL and hi >= -ZERO_TOL)


def significance(lo: float | None, hi: float | None) -> str:
    """'improved' (interval above 0), 'degraded' (below 0), 'not significant' (covers 0) or 'n/a'."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    if lo > ZERO_TOL:
        return "improved"
    if hi < -ZERO_TOL:
        return "degraded"
    return "not significant"


def point_interval(entries: list[dict], per_query: list[dict], base_entries: list[dict], base_per_query: list[dict],
                   n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """One configuration against its original, by the protocol above (entries both have, in report order; the
    queries both have, sorted): the average NDCG@5's change and relative change (percent) with their percentile
    intervals, `delta`, `delta_lo`, `delta_hi`, `pct`, `pct_lo`, `pct_hi`. The report's own intervals use the
    entries common to every configuration of the model, so they match this when the configurations share entries."""
    bench = {(e["task"], e["subset"]): str(e.get("benchmark", "")) for e in entries}
    base_keys = {(e["task"], e["subset"]) for e in base_entries}
    scores: dict[tuple, dict] = {}
    for side, rows in ((0, per_query), (1, base_per_query)):
        for r in rows:
            scores.setdefault((r["task"], r["subset"]), ({}, {}))[side][str(r["query_id"])] = float(r["ndcg_at_5"])
    values = []
    for key in sorted(set(bench) & base_keys, key=lambda k: (bench[k], k[0], k[1])):
        q, b = scores.get(key, ({}, {}))
        ids = sorted(set(q) & set(b))
        if ids:
            values.append(np.array([[q[i] for i in ids], [b[i] for i in ids]]))
    if not values:
        raise ValueError("no entry with queries on both sides")
    point = np.array([v.mean(axis=1) for v in values]).mean(axis=0)  # (2,): configuration, original
    reps = bootstrap_entry_means(values, n_boot, seed).mean(axis=1)  # (B, 2)
    delta, pct = reps[:, 0] - reps[:, 1], 100.0 * (reps[:, 0] - reps[:, 1]) / reps[:, 1]
    (d_lo, p_lo), (d_hi, p_hi) = percentile_ci(np.stack([delta, pct], axis=1))
    return {"delta": float(point[0] - point[1]), "delta_lo": float(d_lo), "delta_hi": float(d_hi),
            "pct": float(100.0 * (point[0] - point[1]) / point[1]), "pct_lo": float(p_lo), "pct_hi": float(p_hi)}  # fmt: skip


# ------------------------------------------------------------------------------------------------ design


def _sort_key(v: Any) -> tuple:
    """Numeric-aware ordering of param values (they arrive as strings)."""
    if isinstance(v, tuple):
        return tuple(_sort_key(x) for x in v)
    try:
        return (0, float(v), str(v))
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def sort_levels(values) -> list:
    return sorted(set(values), key=_sort_key)


@dataclass
class Factor:
    """One factor of the analysis: a param, or several params that always change together (compound)."""

    params: list[str]
    levels: list[tuple]  # each level is a tuple of the params' values
    values: list[tuple]  # level of each quantized config, in config order

    @property
    def name(self) -> str:
        return " + ".join(self.params)

    @property
    def compound(self) -> bool:
        return len(self.params) > 1

    @staticmethod
    def level_text(params: list[str], level: tuple) -> str:
        return ", ".join(f"{p}={v}" for p, v in zip(params, level, strict=True))


@dataclass
class Design:
    varying: list[str]
    factors: list[Factor]
    confounded: list[tuple[str, str, str]] = field(default_factory=list)  # (a, b, how)
    n_cells: int = 0
    n_cells_full: int = 0

    @property
    def complete(self) -> bool:
        return self.n_cells == self.n_cells_full


def detect_design(params: list[dict[str, str]], candidates: list[str]) -> Design:
    """Which params vary among the configs, which of them are confounded, and the resulting factors.

    Two varying params are confounded when one determines the other across the configs (every level of the
    one occurs with a single level of the other), e.g. batch size and nsamples changed together with
    seqlen. Confounded params are merged (connected components) into one compound factor: only their joint
    effect can be estimated.
    """
    # a param varies when the configs that have it disagree: a quantization knob is absent from a quant=none
    # configuration (the original's weights behind a compressed index), whose difference is `quant.method` itself
    varying = [k for k in candidates if len({str(p[k]) for p in params if k in p}) > 1]
    col = {k: [str(p.get(k, "n/a")) for p in params] for k in varying}
    confounded: list[tuple[str, str, str]] = []
    parent = {k: k for k in varying}

    def find(k: str) -> str:
        while parent[k] != k:
            k = parent[k]
        return k

    for a, b in itertools.combinations(varying, 2):
        na, nb = len(set(col[a])), len(set(col[b]))
        npair = len(set(zip(col[a], col[b], strict=True)))
        if npair == na and npair == nb:
            how = f"`{a}` and `{b}` one-to-one"
        elif npair == na:
            how = f"`{b}` is determined by `{a}`"
        elif npair == nb:
            how = f"`{a}` is determined by `{b}`"
        else:
            continue
        confounded.append((a, b, how))
        parent[find(b)] = find(a)
    groups: dict[str, list[str]] = {}
    for k in varying:
        groups.setdefault(find(k), []).append(k)
    factors = []
    for ks in groups.values():
        vals = [tuple(col[k][i] for k in ks) for i in range(len(params))]
        factors.append(Factor(params=ks, levels=sort_levels(vals), values=vals))
    cells = {tuple(f.values[i] for f in factors) for i in range(len(params))}
    full = math.prod(len(f.levels) for f in factors) if factors else 1
    return Design(varying=varying, factors=factors, confounded=confounded, n_cells=len(cells) if factors else 1,
                  n_cells_full=full)


def _cells_of(design: Design, factor: Factor, n: int) -> list[tuple]:
    """Per config, the combination of the OTHER factors' levels (the cell a level is averaged over)."""
    others = [f for f in design.factors if f is not factor]
    return [tuple(f.values[i] for f in others) for i in range(n)]


def level_weights(design: Design, factor: Factor, n: int) -> dict[tuple, np.ndarray]:
    """Weights over the n configs giving, per level, the mean over the other factors' cells of the cell means."""
    cells = _cells_of(design, factor, n)
    out = {}
    for level in factor.levels:
        w = np.zeros(n)
        present = sort_levels(cells[i] for i in range(n) if factor.values[i] == level)
        for cell in present:
            members = [i for i in range(n) if factor.values[i] == level and cells[i] == cell]
            w[members] += 1.0 / (len(members) * len(present))
        out[level] = w
    return out


def contrast_weights(design: Design, factor: Factor, level: tuple, ref: tuple, n: int) -> np.ndarray | None:
    """Weights of (level - ref) averaged over the cells of the other factors present at both levels."""
    cells = _cells_of(design, factor, n)
    at = {lv: {cells[i] for i in range(n) if factor.values[i] == lv} for lv in (level, ref)}
    shared = sort_levels(at[level] & at[ref])
    if not shared:
        return None
    w = np.zeros(n)
    for cell in shared:
        for lv, sign in ((level, 1.0), (ref, -1.0)):
            members = [i for i in range(n) if factor.values[i] == lv and cells[i] == cell]
            w[members] += sign / (len(members) * len(shared))
    return w
