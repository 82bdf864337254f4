"""What a configuration shows in a table cell: significance marks and words, intervals, sizes, speed metrics."""

from __future__ import annotations

from colq_sweep import contract as R
from colq_sweep.report import tables as T
from colq_sweep.report.numbers import ConfigStats
from colq_sweep.report.points import PointResults
from colq_sweep.report.stats import CI_LEVEL, significance

MARK = {"improved": "▲", "degraded": "▼", "not significant": "", "n/a": ""}
SPEED = [  # (metric, header, formatter)
    (R.QUANT_SECONDS, "Quantization time", T.seconds),
    ("quant/peak_rss_mb", "Quant. peak RSS (MB)", T.num),
    ("quant/peak_cuda_mb", "Quant. peak GPU (MB)", T.num),
    (R.EVAL_SECONDS, "Evaluation time", T.seconds),
    (R.PAGES_PER_S, "Pages/s", lambda v: T.num(v, 2)),
    ("eval/queries_per_s", "Queries/s", lambda v: T.num(v, 2)),
    ("eval/peak_rss_mb", "Eval. peak RSS (MB)", T.num),
    ("eval/peak_cuda_mb", "Eval. peak GPU (MB)", T.num),
]
ALIASES = {  # older metric names (before the eval_ prefix), used only when the contract's name is absent
    "eval/peak_rss_mb": ("peak_rss_mb",),
    "eval/peak_cuda_mb": ("peak_cuda_mb",),
}


def speed_metric(p: PointResults, key: str) -> float | None:
    for k in (key, *ALIASES.get(key, ())):
        v = p.metric(k)
        if v is not None:
            return v
    return None
PCT = int(round(CI_LEVEL * 100))


def sig_of(c: ConfigStats, name: str = "delta_all") -> str:
    lo, hi = c.ci.get(name, (None, None))
    return significance(lo, hi)


def sig_words(s: str) -> str:
    return {"improved": "yes (improvement)", "degraded": "yes (loss)", "not significant": "no (CI covers 0)",
            "n/a": "n/a"}[s]


def ci_text(c: ConfigStats, name: str, kind: str = "delta") -> str:
    lo, hi = c.ci.get(name, (None, None))
    return T.ci(lo, hi, kind)


def size_text(c: ConfigStats) -> str:
    if c.base_bytes is None and c.quant_bytes is None:
        return T.NA
    return f"{T.nbytes(c.base_bytes)} → {T.nbytes(c.quant_bytes)}"


def anchor(model: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in model.lower())
