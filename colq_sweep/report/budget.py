"""Budget questions over the cross-model view: the best configuration within a memory, loss, speed or quality budget,
or a plain statement that none is and which constraint binds; with no budget, the trade-off the frontier shows.

`python -m colq_sweep.report --name X --max-memory-gb 8 --max-loss-pct 1 --min-pages-per-s 15` (and `--min-ndcg`,
`--pages`, `--prefer quality|memory|speed`). Memory is deployment memory: weights on disk + the index of `--pages`
pages (default: of the evaluated corpora). Loss is relative to the configuration's own original, on the entries
every model has (an original's loss is 0); the point estimate decides, its interval is said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from colq_sweep.report import tables as T
from colq_sweep.report.frontier import RECOVERY_FLAG, Candidate, CrossAnalysis

PREFER = ("quality", "memory", "speed")


@dataclass(frozen=True)
class Budget:
    max_memory_gb: float | None = None  # decimal GB (1e9 bytes), as the report's sizes
    max_loss_pct: float | None = None
    min_pages_per_s: float | None = None
    min_ndcg: float | None = None
    prefer: str = "quality"

    def __post_init__(self):
        for name in ("max_memory_gb", "max_loss_pct", "min_pages_per_s", "min_ndcg"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a number >= 0, got {v}")
        if self.min_ndcg is not None and self.min_ndcg > 1:
            raise ValueError(f"--min-ndcg is an NDCG@5 in [0, 1], got {self.min_ndcg}")
        if self.prefer not in PREFER:
            raise ValueError(f"--prefer must be one of {', '.join(PREFER)}, got {self.prefer!r}")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.max_memory_gb, self.max_loss_pct, self.min_pages_per_s, self.min_ndcg))

    def constraints(self) -> list[tuple[str, str]]:
        """(option, its text) of each constraint given."""
        out = []
        if self.max_memory_gb is not None:
            out.append(("--max-memory-gb", f"memory ≤ {self.max_memory_gb:g} GB"))
        if self.max_loss_pct is not None:
            out.append(("--max-loss-pct", f"loss ≤ {self.max_loss_pct:g}% of its original"))
        if self.min_pages_per_s is not None:
            out.append(("--min-pages-per-s", f"≥ {self.min_pages_per_s:g} pages/s"))
        if self.min_ndcg is not None:
            out.append(("--min-ndcg", f"avg NDCG@5 ≥ {self.min_ndcg:g}"))
        return out


@dataclass
class Answer:
    budget: Budget
    chosen: Candidate | None
    feasible: list[Candidate]
    failures: dict[str, dict[str, str]]  # candidate name -> {option: why it fails it}
    binding: list[tuple[str, list[Candidate]]]  # option -> the candidates that fail only it
    lines: list[str]  # the answer in words


def check(b: Budget, c: Candidate, speed_ok: bool) -> dict[str, str]:
    """Which of the budget's constraints `c` fails, and why ('n/a' reasons when the number is unknown)."""
    bad: dict[str, str] = {}
    if b.max_memory_gb is not None:
        m = c.memory_bytes
        if m is None:
            bad["--max-memory-gb"] = "memory unknown"
        elif m > b.max_memory_gb * 1e9:
            bad["--max-memory-gb"] = f"{T.nbytes(m)}"
    if b.max_loss_pct is not None:
        loss = 0.0 if c.is_original else c.loss_pct
        if loss is None:
            bad["--max-loss-pct"] = "no original to compare with"
        elif loss > b.max_loss_pct:
            bad["--max-loss-pct"] = f"loss {loss:.2f}%"
    if b.min_pages_per_s is not None:
        if c.pages_per_s is None:
            bad["--min-pages-per-s"] = "pages/s not measured"
        elif not speed_ok:
            bad["--min-pages-per-s"] = "speeds measured on different devices"
        elif c.pages_per_s < b.min_pages_per_s:
            bad["--min-pages-per-s"] = f"{c.pages_per_s:.2f} pages/s"
    if b.min_ndcg is not None and not c.avg >= b.min_ndcg:
        bad["--min-ndcg"] = f"NDCG@5 {c.avg:.4f}"
    return bad


def _rank(b: Budget, c: Candidate) -> tuple:
    mem = c.memory_bytes if c.memory_bytes is not None else math.inf
    speed = c.pages_per_s or 0.0
    if b.prefer == "memory":
        return (-mem, c.avg, speed)
    if b.prefer == "speed":
        return (speed, c.avg, -mem)
    return (c.avg, -mem, speed)


def describe(c: Candidate) -> str:
    bits = [f"avg NDCG@5 {T.score(c.avg)}" + (f" [{c.ci[0]:.4f}, {c.ci[1]:.4f}]" if c.ci else "")]
    if c.is_original:
        bits.append("the original")
    elif c.recovery is not None:
        r = f"recovery {c.recovery:.3f}"
        if c.recovery_ci:
            r += f" [{c.recovery_ci[0]:.3f}, {c.recovery_ci[1]:.3f}]"
        bits.append(r)
    bits.append(f"memory {T.nbytes(c.memory_bytes)}")
    if c.pages_per_s is not None:
        bits.append(f"{c.pages_per_s:.2f} pages/s")
    return "; ".join(bits)


def answer(ca: CrossAnalysis, b: Budget) -> Answer:
    speed_ok = ca.speed_device is not None or len({c.device for c in ca.candidates if c.pages_per_s is not None}) <= 1
    failures = {c.name: check(b, c, speed_ok) for c in ca.candidates}
    feasible = [c for c in ca.candidates if not failures[c.name] and math.isfinite(c.avg)]
    given = " and ".join(t for _, t in b.constraints()) or "no constraint"
    lines: list[str] = []
    chosen = max(feasible, key=lambda c: _rank(b, c)) if feasible else None
    binding: list[tuple[str, list[Candidate]]] = []
    if chosen is not None:
        how = {"quality": "the highest quality", "memory": "the smallest", "speed": "the fastest"}[b.prefer]
        lines.append(f"**Within {given}: `{chosen.name}`**, {how} of {len(feasible)} configuration(s) that satisfy it "
                     f"({describe(chosen)}).")  # fmt: skip
        lines += _alternatives(ca, chosen, feasible)
        if b.max_loss_pct is not None and not chosen.is_original and chosen.loss_ci is not None:
            hi = chosen.loss_ci[1]
            lines.append(f"Its loss interval reaches {hi:.2f}%: " + ("within the budget with 95% confidence."
                         if hi <= b.max_loss_pct else "the budget holds for the point estimate, not with 95% confidence."))
    else:
        for opt, _ in b.constraints():
            only = [c for c in ca.candidates if set(failures[c.name]) == {opt}]
            if only:
                binding.append((opt, only))
        lines.append(f"**No configuration satisfies {given}** ({len(ca.candidates)} configuration(s) checked).")
        for opt, only in binding:
            best = max(only, key=lambda c: _rank(b, c))
            lines.append(f"`{opt}` binds: {len(only)} configuration(s) meet every other constraint; the best of them, "
                         f"`{best.name}`, has {failures[best.name][opt]} ({describe(best)}).")  # fmt: skip
        if not binding:
            lines.append("No single constraint binds: every configuration fails two or more of them.")
    for c in [chosen] if chosen is not None else []:
        if not c.is_original and c.recovery is not None and c.recovery < RECOVERY_FLAG:
            lines.append(f"Its recovery {c.recovery:.3f} is below {RECOVERY_FLAG} (llm-compressor's convention for an "
                         "acceptable quantized model).")
    return Answer(b, chosen, feasible, failures, binding, lines)


def _alternatives(ca: CrossAnalysis, chosen: Candidate, feasible: list[Candidate]) -> list[str]:
    """Feasible configurations statistically tied with the chosen one in quality that are smaller."""
    tied = []
    for c in feasible:
        if c is chosen or c.memory_bytes is None or chosen.memory_bytes is None or c.memory_bytes >= chosen.memory_bytes:
            continue
        d, lo, hi = ca.diff(chosen, c)
        if lo is not None and lo <= 0 <= hi:
            tied.append((c, d, lo, hi))
    if not tied:
        return []
    c, d, lo, hi = min(tied, key=lambda t: t[0].memory_bytes)
    return [f"`{c.name}` is smaller ({T.nbytes(c.memory_bytes)}) and statistically tied with it in quality "
            f"(difference {d:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]): prefer it where memory matters."]


def tradeoff(ca: CrossAnalysis) -> list[str]:
    """With no budget: the trade-off the frontier shows, from the smallest configuration up."""
    front = ca.frontier
    if not front:
        return ["No configuration has both a quality and a memory figure: no frontier."]
    lines = [f"The frontier has {len(front)} of {len(ca.candidates)} configuration(s): "
             + "; ".join(f"`{c.name}` ({T.score(c.avg)}, {T.nbytes(c.memory_bytes)})" for c in front) + "."]
    for a, b in zip(front, front[1:], strict=False):
        d, lo, hi = ca.diff(b, a)
        ci = f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None else ""
        verdict = "" if lo is None else (" (significant)" if lo > 0 or hi < 0 else " (within the interval: not significant)")
        lines.append(f"From `{a.name}` to `{b.name}`: {T.nbytes(b.memory_bytes - a.memory_bytes)} more memory for "
                     f"{d:+.4f} NDCG@5{ci}{verdict}.")
    cross = _cross_model_pairs(ca)
    if cross:
        lines.append(cross)
    return lines


def _cross_model_pairs(ca: CrossAnalysis) -> str:
    """The deployer's question in one sentence: the best quantized configuration of a larger model vs the original
    of a smaller one, where such a pair exists."""
    originals = [c for c in ca.candidates if c.is_original and c.weights_bytes]
    out = []
    for small in sorted(originals, key=lambda c: c.weights_bytes):
        larger = [c for c in ca.candidates if not c.is_original and c.model != small.model and c.original is not None
                  and c.original.weights_bytes and c.original.weights_bytes > small.weights_bytes]  # fmt: skip
        if not larger:
            continue
        best = max(larger, key=lambda c: c.avg)
        d, lo, hi = ca.diff(best, small)
        ci = f", 95% CI [{lo:+.4f}, {hi:+.4f}]" if lo is not None else ""
        word = ("better than" if lo is not None and lo > 0 else "worse than" if hi is not None and hi < 0
                else "not distinguishable from" if lo is not None else "compared with")
        out.append(f"`{best.name}` ({T.nbytes(best.memory_bytes)}) is {word} `{small.name}` "
                   f"({T.nbytes(small.memory_bytes)}): {d:+.4f} NDCG@5{ci}.")
    return " ".join(out)
