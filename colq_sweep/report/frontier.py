"""Across models: every configuration of every model (originals included) on the entries all of them have, with one
paired query bootstrap over all of them, each one's recovery, memory and speed, and the Pareto frontier.

The entries are the intersection of the models' common entries (report/analysis.py); the ones left out are listed
with the models that lack them. Queries are shared across models (same tasks, same query ids), so the bootstrap
resamples them once for every configuration of the experiment: a difference between "8B W4A16" and "4B bf16" gets
an interval like a change within one model does. Pure: pandas + numpy, no MLflow, no plotting.

Objectives of the frontier: quality (average NDCG@5, up), memory (weights on disk + the index of `pages` pages or
of the evaluated corpora, down) and encoding speed (pages/s, up) where every configuration's speed was measured
on one device kind (speeds within SPEED_TOL of each other count as equal: a run measures its speed once). A configuration no other beats on all of them is on the frontier; one that is beaten only by
frontier points whose quality is within the interval of its own is "tied", not "dominated".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from colq_sweep import contract as R
from colq_sweep.report import stats
from colq_sweep.report.numbers import ConfigStats, EntryKey, ModelAnalysis
from colq_sweep.report.points import clean_per_query

RECOVERY_FLAG = 0.95  # llm-compressor's convention: a quantized model should keep >= 95% of its original's score
SPEED_TOL = 0.10  # speeds within 10% are equal for the frontier: one measurement per run, no interval
V3 = "ViDoRe(v3)"


@dataclass
class Candidate:
    """One configuration of the experiment in the cross-model view."""

    model: str
    config: ConfigStats = field(repr=False)
    name: str  # "<model> / <configuration>", unique in the experiment
    avg: float  # avg NDCG@5 over the shared entries
    avg10_v3: float | None  # avg NDCG@10 over the shared ViDoRe(v3) entries (its official metric)
    original: Candidate | None = field(default=None, repr=False)  # its model's original (None: it is one, or none)
    ci: tuple[float, float] | None = None
    recovery: float | None = None  # avg / its original's avg
    recovery_ci: tuple[float, float] | None = None
    weights_bytes: float | None = None  # on disk
    weights_device_mb: float | None = None  # the loaded model's tensors where it ran
    device: str = ""  # device kind its speed and device memory were measured on ("cpu", "NVIDIA H200")
    index_per_page: float | None = None
    index_bytes: float | None = None  # index of `pages` pages (or of the evaluated corpora)
    pages_per_s: float | None = None
    queries_per_s: float | None = None
    status: str = ""  # frontier | tied | dominated
    relation: Candidate | None = field(default=None, repr=False)  # the frontier point it is tied with / beaten by
    relation_diff: tuple[float, float, float] | None = None  # (frontier point - it, lo, hi)
    col: int | None = None  # column of CrossAnalysis.boot

    @property
    def is_original(self) -> bool:
        return self.config.is_baseline

    @property
    def memory_bytes(self) -> float | None:
        """Deployment memory: weights + index (weights alone where the run logged no index)."""
        if self.weights_bytes is None:
            return None
        return self.weights_bytes + (self.index_bytes or 0.0)

    @property
    def loss_pct(self) -> float | None:
        return None if self.recovery is None else (1.0 - self.recovery) * 100.0

    @property
    def loss_ci(self) -> tuple[float, float] | None:
        if self.recovery_ci is None:
            return None
        lo, hi = self.recovery_ci
        return (1.0 - hi) * 100.0, (1.0 - lo) * 100.0


@dataclass
class CrossAnalysis:
    candidates: list[Candidate]
    entries: list[EntryKey]  # shared entries, in report order
    benchmarks: list[str]  # benchmark of each shared entry
    dropped: list[tuple[EntryKey, list[str]]]  # (entry, models whose comparison set lacks it)
    n_boot: int
    seed: int
    pages: float | None  # the page count the index memory is for (None: the evaluated corpora)
    speed_device: str | None  # the device kind all speeds were measured on (None: speed is not an objective)
    speed_note: str
    notes: list[str] = field(default_factory=list)
    boot: np.ndarray | None = None  # (B, C) replicate averages over the shared entries
    shared_label: str = ""  # the label parts every quantized configuration has (left out of their names)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(c.model for c in self.candidates))

    @property
    def frontier(self) -> list[Candidate]:
        return sorted([c for c in self.candidates if c.status == "frontier"], key=lambda c: (c.memory_bytes or 0, -c.avg))

    def diff(self, a: Candidate, b: Candidate) -> tuple[float, float | None, float | None]:
        """a's avg NDCG@5 - b's over the shared entries, with its paired 95% interval (None without per-query scores)."""
        est = a.avg - b.avg
        if self.boot is None or a.col is None or b.col is None:
            return est, None, None
        lo, hi = stats.percentile_ci(self.boot[:, a.col] - self.boot[:, b.col])
        return est, float(lo), float(hi)

    def by_name(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)


def _metric(c: ConfigStats, key: str) -> float | None:
    return c.point.metric(key)


def _shared_entries(analyses: list[ModelAnalysis]):
    sets = {ma.model: set(ma.entry_keys) for ma in analyses}
    shared = set.intersection(*sets.values()) if sets else set()
    union = set().union(*sets.values()) if sets else set()
    dropped = [(e, [m for m, s in sets.items() if e not in s]) for e in sorted(union - shared)]
    order = [e for e in analyses[0].entry_keys if e in shared] if analyses else []
    bench = dict(zip(analyses[0].entry_keys, analyses[0].entries["benchmark"], strict=True)) if analyses else {}
    return order, [bench[e] for e in order], dropped


def _candidate(ma: ModelAnalysis, c: ConfigStats, idx: list[int], v3: list[int], pages: float | None) -> Candidate:
    p = c.point
    weights = c.quant_bytes if c.quant_bytes is not None else c.base_bytes
    per_page = _metric(c, R.INDEX_BYTES_PER_PAGE)
    index = per_page * pages if pages is not None and per_page is not None else _metric(c, R.INDEX_TOTAL_BYTES)
    return Candidate(
        model=ma.model, config=c, name=f"{ma.model} / {c.short}", avg=float(c.scores[idx].mean()) if idx else math.nan,
        avg10_v3=float(np.nanmean(c.ndcg10[v3])) if v3 and np.isfinite(c.ndcg10[v3]).any() else None,
        weights_bytes=weights, weights_device_mb=_metric(c, "eval/weights_device_mb"), device=p.device,
        index_per_page=per_page, index_bytes=index, pages_per_s=_metric(c, R.PAGES_PER_S),
        queries_per_s=_metric(c, "eval/queries_per_s"),
    )


def analyze_across(analyses: list[ModelAnalysis], n_boot: int = 2000, seed: int = 0,
                   pages: float | None = None) -> CrossAnalysis:
    """The cross-model view of `analyses` (one per model, from analysis.analyze)."""
    usable = [ma for ma in analyses if ma.n_entries and ma.all_configs]
    order, benches, dropped = _shared_entries(usable)
    cands: list[Candidate] = []
    for ma in usable:
        pos = {e: i for i, e in enumerate(ma.entry_keys)}
        idx = [pos[e] for e in order]
        v3 = [pos[e] for e, b in zip(order, benches, strict=True) if b == V3]
        mine = [_candidate(ma, c, idx, v3, pages) for c in ma.all_configs]
        orig = mine[0] if ma.baseline is not None else None
        for c in mine:
            c.original = orig if c is not orig else None
            if orig is not None and orig.avg:
                c.recovery = c.avg / orig.avg
        cands.extend(mine)
    speed_device, speed_note = _speed_device(cands)
    ca = CrossAnalysis(cands, order, benches, dropped, n_boot, seed, pages, speed_device, speed_note,
                       shared_label=_cross_names(cands))
    no_index = [c.name for c in cands if c.index_bytes is None]
    if no_index and len(no_index) < len(cands):
        ca.notes.append(f"no index metrics for {', '.join(f'`{n}`' for n in no_index)} (a run logged before they "
                        "were tracked): its memory is its weights alone, the others' include their index")
    if cands and order:
        _bootstrap(ca)
    _pareto(ca)
    return ca


def _cross_names(cands: list[Candidate]) -> str:
    """Name each quantized configuration by the parts of its full label (method, scheme, knobs) that not every
    quantized configuration of the experiment has: a model's own short label drops what is constant within that
    model, which across models can be what tells two apart. Returns the shared parts (full labels if names clash)."""
    quant = [c for c in cands if not c.config.is_baseline]
    if len(quant) < 2:
        return ""
    parts = [c.config.key.split() for c in quant]  # the model's unique key: its label (+ a run id where two clash)
    shared = set.intersection(*map(set, parts))
    names = [f"{c.model} / {' '.join(t for t in p if t not in shared)}" for c, p in zip(quant, parts, strict=True)]
    if len(set(names)) < len(names) or not all(n.split(" / ", 1)[1] for n in names):
        names, shared = [f"{c.model} / {c.config.key}" for c in quant], set()
    for c, n in zip(quant, names, strict=True):
        c.name = n
    return " ".join(t for t in parts[0] if t in shared)


def _speed_device(cands: list[Candidate]) -> tuple[str | None, str]:
    if not cands:
        return None, ""
    missing = [c.name for c in cands if c.pages_per_s is None]
    if missing:
        return None, (f"speed is not an objective: no pages/s for {', '.join(f'`{m}`' for m in missing[:4])}"
                      + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
                      + " (evaluated from caches, or not recorded)")
    kinds = sorted({c.device or "?" for c in cands})
    if len(kinds) > 1:
        return None, f"speed is not an objective: measured on different devices ({', '.join(kinds)})"
    return kinds[0], f"speed (pages/s) measured on {kinds[0]} for every configuration"


def _bootstrap(ca: CrossAnalysis) -> None:
    """One paired query bootstrap over every configuration of the experiment that has per-query scores."""
    qmaps = {}
    for c in ca.candidates:
        pq = clean_per_query(c.config.point.per_query)
        if len(pq):
            qmaps[c.name] = {e: dict(zip(g["query_id"].tolist(), g["ndcg_at_5"].to_numpy(dtype=float).tolist(), strict=True))
                             for e, g in pq.groupby(["task", "subset"])}  # fmt: skip
    part = [c for c in ca.candidates if c.name in qmaps and all(e in qmaps[c.name] for e in ca.entries)]
    lacking = [c.name for c in ca.candidates if c not in part]
    if lacking:
        ca.notes.append(f"no interval for {', '.join(f'`{n}`' for n in lacking)}: no per-query scores on every "
                        "shared entry")  # fmt: skip
    if len(part) < 1:
        return
    qids = [sorted(set.intersection(*[set(qmaps[c.name][e]) for c in part])) for e in ca.entries]
    if any(not q for q in qids):
        ca.notes.append("no interval across models: an entry has no query id shared by every configuration")
        return
    values = [np.array([[qmaps[c.name][e][q] for q in qs] for c in part]) for e, qs in zip(ca.entries, qids, strict=True)]
    ca.boot = stats.bootstrap_entry_means(values, ca.n_boot, ca.seed).mean(axis=1)  # (B, C)
    for j, c in enumerate(part):
        c.col = j
        c.ci = tuple(map(float, stats.percentile_ci(ca.boot[:, j])))
    for c in part:
        o = c.original
        if o is not None and o.col is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = ca.boot[:, c.col] / ca.boot[:, o.col]
            if np.isfinite(ratio).all():
                c.recovery_ci = tuple(map(float, stats.percentile_ci(ratio)))


def _objectives(ca: CrossAnalysis, c: Candidate) -> tuple[float, float, float] | None:
    """(quality, -memory, speed) to maximise; None when the memory is unknown (it is then in no comparison)."""
    if c.memory_bytes is None or not math.isfinite(c.avg):
        return None
    speed = c.pages_per_s if ca.speed_device is not None else 0.0
    return c.avg, -c.memory_bytes, speed


def dominates(a: tuple, b: tuple, speed_tol: float = SPEED_TOL) -> bool:
    """a = (quality, -memory, speed) is at least as good as b on each and better on one; speeds within `speed_tol`
    of each other count as equal."""
    (qa, ma, sa), (qb, mb, sb) = a, b
    faster, slower = sa > sb * (1 + speed_tol), sa < sb * (1 - speed_tol)
    return qa >= qb and ma >= mb and not slower and (qa > qb or ma > mb or faster)


def _pareto(ca: CrossAnalysis) -> None:
    objs = {c.name: _objectives(ca, c) for c in ca.candidates}
    known = [c for c in ca.candidates if objs[c.name] is not None]
    for c in ca.candidates:
        if objs[c.name] is None:
            c.status = "n/a"
            continue
        beaten_by = [d for d in known if d is not c and dominates(objs[d.name], objs[c.name])]
        c.status = "frontier" if not beaten_by else ""
    frontier = [c for c in known if c.status == "frontier"]
    for c in known:
        if c.status:
            continue
        # dominance with a speed tolerance is not transitive: c may be beaten only by points that are off the
        # frontier themselves (A beats B beats C, A within 10 % of B's speed but not of C's): then those relate it
        beaters = [d for d in frontier if dominates(objs[d.name], objs[c.name])] or \
            [d for d in known if d is not c and dominates(objs[d.name], objs[c.name])]
        diffs = {d.name: ca.diff(d, c) for d in beaters}
        surely = [d for d in beaters if diffs[d.name][1] is not None and diffs[d.name][1] > stats.ZERO_TOL]
        if surely:  # beaten with a quality gain its interval confirms
            d = max(surely, key=lambda d: diffs[d.name][0])
            c.status = "dominated"
        elif all(diffs[d.name][1] is not None for d in beaters):  # within the interval of every frontier point that beats it
            d = min(beaters, key=lambda d: d.memory_bytes)
            c.status = "tied"
        else:
            d = max(beaters, key=lambda d: diffs[d.name][0])
            c.status = "dominated"  # no interval: the point estimates decide
        c.relation, c.relation_diff = d, diffs[d.name]
