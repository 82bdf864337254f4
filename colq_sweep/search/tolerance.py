"""The tolerance search (`hydra/sweeper=colq-tolerance`): the cheapest candidate whose loss is within `search.max_loss_pct`.

Intel Neural Compressor's accuracy-driven tuning, with this project's statistics: candidates (the product of the
sweep's overrides) are ordered by a predicted cost (search/cost.py), evaluated in that order (one at a time, or
`hydra.sweeper.max_batch_size` at a time on a launcher with several slots: the answer is the same), and the search
stops at the first that passes. The loss is the relative drop of the average NDCG@5 from the original, in percent
(-ndcg5/delta_pct_all). `search.criterion=point` passes a candidate whose loss is at most the tolerance;
`interval` also needs the upper end of the loss's 95 % paired-bootstrap interval (report/stats.py
`point_interval`) within it: a loss that is small only by chance does not pass. A candidate that failed to run
does not pass either, and the answer says it is conditional on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from colq_sweep import contract as R
from colq_sweep.config.checks import ConfigError, choice
from colq_sweep.search.cost import COSTS, Cost, built_bytes

CRITERIA = ("point", "interval")
OK = ("FINISHED", "SKIPPED")  # a SKIPPED point was found finished in the store: its numbers are real


@dataclass(frozen=True)
class SearchSpec:
    max_loss_pct: float = 1.0
    criterion: str = "point"
    cost: str = "bytes"

    @classmethod
    def from_config(cls, d: dict[str, Any] | None) -> SearchSpec:
        d = dict(d or {})
        unknown = sorted(set(d) - {"max_loss_pct", "criterion", "cost"})
        if unknown:
            raise ConfigError(f"search.{unknown[0]}", d[unknown[0]], "unknown key; search takes: cost, criterion, max_loss_pct")
        spec = cls(**d)
        m = spec.max_loss_pct
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0 or m >= 100:
            raise ConfigError("search.max_loss_pct", m, "the tolerated loss in percent of the original's avg NDCG@5: "
                              "a number from 0 (no loss) to below 100, e.g. search.max_loss_pct=1")  # fmt: skip
        choice("search.criterion", spec.criterion, CRITERIA)
        choice("search.cost", spec.cost, COSTS)
        return spec


@dataclass
class Candidate:
    num: int  # its job number: its place in the cost order
    overrides: str  # what tells it apart, as typed
    model: str
    label: str
    cost: Cost
    status: str = "NOT RUN"  # NOT RUN | FINISHED | SKIPPED (reused) | FAILED | CRASHED
    run_id: str | None = None
    loss_pct: float | None = None
    loss_hi_pct: float | None = None  # the upper end of the loss's 95 % interval
    measured_bytes: float | None = None  # the checkpoint as built (+ the index as evaluated, when predicted)
    verdict: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in OK

    def record(self, status: dict, interval: dict | None) -> None:
        """What its job reported (its status file) and its interval (None: not computable)."""
        self.status = status["status"] if status["status"] in OK + ("FAILED",) else "CRASHED"
        self.run_id = status.get("run_id")
        self.error = status.get("error")
        m = R.tracked(status.get("metrics") or {})  # a status file written before the contract's names too
        if self.done and R.DELTA5_PCT_ALL in m:
            self.loss_pct = -float(m[R.DELTA5_PCT_ALL])
            self.loss_hi_pct = -interval["pct_lo"] if interval else None
        elif self.done and self.label == "original":  # the original itself among the candidates: no loss by definition
            self.loss_pct = self.loss_hi_pct = 0.0
        elif self.done:  # a run that has no comparison: no loss to test
            self.status, self.error = "FAILED", "no change vs the original was logged"
        weights = built_bytes(m) if self.done else None
        if weights is not None:  # as predicted: with the index when the prediction had it
            index = float(m.get(R.INDEX_TOTAL_BYTES, 0.0)) if self.cost.index_bytes is not None else 0.0
            self.measured_bytes = weights + index

    def passes(self, spec: SearchSpec) -> bool:
        if not self.done or self.loss_pct is None:
            return False
        if self.loss_pct > spec.max_loss_pct:
            return False
        return spec.criterion == "point" or (self.loss_hi_pct is not None and self.loss_hi_pct <= spec.max_loss_pct)

    def why(self, spec: SearchSpec) -> str:
        """Why it passed or failed, in words."""
        if not self.done:
            return f"{self.status.lower()}: {self.error or 'no status'}"[:160]
        tol = f"{spec.max_loss_pct:g} %"
        hi = f", 95 % upper {self.loss_hi_pct:.2f} %" if self.loss_hi_pct is not None else ""
        if self.loss_pct > spec.max_loss_pct:
            return f"loss {self.loss_pct:.2f} % > {tol}{hi}"
        if spec.criterion == "interval" and (self.loss_hi_pct is None or self.loss_hi_pct > spec.max_loss_pct):
            return f"loss {self.loss_pct:.2f} % <= {tol} but its 95 % upper end {self.loss_hi_pct:.2f} % > {tol}" if \
                self.loss_hi_pct is not None else f"loss {self.loss_pct:.2f} % <= {tol} but no interval to check"
        return f"loss {self.loss_pct:.2f} % <= {tol}{hi}"


def decide(cands: list[Candidate], spec: SearchSpec) -> Candidate | None:
    """The chosen candidate: the first in cost order that passes; set every candidate's verdict."""
    chosen = None
    for c in cands:
        if chosen is not None:
            c.verdict = "not needed: a cheaper candidate passed" if c.status == "NOT RUN" else \
                f"{'passes' if c.passes(spec) else 'fails'} ({c.why(spec)}), dearer than the chosen"
        elif c.passes(spec):
            chosen = c
            c.verdict = f"CHOSEN: {c.why(spec)}"
        elif c.status == "NOT RUN":
            c.verdict = "not run"
        else:
            c.verdict = f"fails: {c.why(spec)}"
    return chosen


def answer(cands: list[Candidate], spec: SearchSpec) -> str:
    """The search's one-paragraph answer (the summary's last line, the parent run's description)."""
    chosen = decide(cands, spec)
    crit = "its loss" if spec.criterion == "point" else "its loss and the upper end of its 95 % interval"
    broken = [c for c in cands if c.status in ("FAILED", "CRASHED") and (chosen is None or c.num < chosen.num)]
    caveat = (f" Conditional: cheaper candidate(s) {', '.join(f'#{c.num}' for c in broken)} failed to run and were "
              "not tested; rerun to test them (finished candidates are reused).") if broken else ""  # fmt: skip
    if chosen is None:
        return (f"No candidate is within {spec.max_loss_pct:g} % ({crit} at most that): the least loss was "
                f"{_least(cands)}.{caveat}")  # fmt: skip
    return (f"Chosen: #{chosen.num} {chosen.model} {chosen.label} ({chosen.overrides}), the cheapest by "
            f"{spec.cost} ({chosen.cost.describe(spec.cost)}) with {crit} within {spec.max_loss_pct:g} %: "
            f"{chosen.why(spec)}.{caveat}")  # fmt: skip


def _least(cands: list[Candidate]) -> str:
    done = [c for c in cands if c.loss_pct is not None]
    if not done:
        return "not measured (no candidate finished)"
    best = min(done, key=lambda c: c.loss_pct)
    return f"{best.loss_pct:.2f} % (#{best.num} {best.label})"


def table(cands: list[Candidate], spec: SearchSpec) -> str:
    """The candidates in cost order with their predicted cost, measured loss and verdict."""
    head = ("job", "candidate", f"predicted ({spec.cost})", "as built", "loss %", "95 % upper", "verdict")
    rows = [head] + [(f"#{c.num}", c.overrides[:60], c.cost.describe(spec.cost),
                      "-" if c.measured_bytes is None else f"{c.measured_bytes / 1e6:.3g} MB",
                      "-" if c.loss_pct is None else f"{c.loss_pct:.2f}",
                      "-" if c.loss_hi_pct is None else f"{c.loss_hi_pct:.2f}", c.verdict[:90]) for c in cands]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*rows[0]), "  ".join("-" * w for w in widths), *(fmt.format(*r) for r in rows[1:])])


def as_record(cands: list[Candidate], spec: SearchSpec) -> dict:
    """The search as the parent run's `search/search.json` (what the report reads)."""
    chosen = decide(cands, spec)
    out = []
    for c in cands:
        d = asdict(c)
        d["cost"] = {**asdict(c.cost), "total_bytes": c.cost.total_bytes}
        d["passes"] = c.passes(spec)
        out.append(d)
    return {"kind": "tolerance", "spec": asdict(spec), "chosen_run_id": chosen.run_id if chosen else None,
            "chosen": chosen.num if chosen else None, "answer": answer(cands, spec), "candidates": out}  # fmt: skip
