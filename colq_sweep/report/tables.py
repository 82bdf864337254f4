"""Number formatting and Markdown tables. Every formatter shows "n/a" for a missing or non-finite value."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

NA = "n/a"


def finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def score(x: Any, digits: int = 5) -> str:
    """An NDCG value, e.g. 0.64247."""
    return f"{float(x):.{digits}f}" if finite(x) else NA


def delta(x: Any, digits: int = 5) -> str:
    """A signed absolute change, e.g. -0.00049 / +0.00120."""
    return f"{float(x):+.{digits}f}" if finite(x) else NA


def pct(x: Any, digits: int = 2, signed: bool = True) -> str:
    if not finite(x):
        return NA
    return f"{float(x):+.{digits}f}%" if signed else f"{float(x):.{digits}f}%"


def ci(lo: Any, hi: Any, kind: str = "delta", digits: int = 5) -> str:
    """A 95% interval in brackets, e.g. [-0.00210, +0.00105] or [-0.60%, +0.12%]."""
    if not (finite(lo) and finite(hi)):
        return NA
    if kind == "pct":
        return f"[{pct(lo, 2)}, {pct(hi, 2)}]"
    if kind == "score":
        return f"[{score(lo, digits)}, {score(hi, digits)}]"
    return f"[{delta(lo, digits)}, {delta(hi, digits)}]"


def nbytes(x: Any) -> str:
    """Decimal units (GB = 10^9 bytes), e.g. 16.70 GB."""
    if not finite(x):
        return NA
    v = float(x)
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.2f} {unit}"
    return f"{v:.0f} B"


def num(x: Any, digits: int = 1) -> str:
    return f"{float(x):,.{digits}f}" if finite(x) else NA


def seconds(x: Any) -> str:
    """e.g. 5040.0 s (1.40 h)."""
    if not finite(x):
        return NA
    v = float(x)
    if v >= 3600:
        return f"{v:,.1f} s ({v / 3600:.2f} h)"
    if v >= 120:
        return f"{v:,.1f} s ({v / 60:.1f} min)"
    return f"{v:,.1f} s"


def code(s: Any) -> str:
    return f"`{s}`"


def _cell(v: Any) -> str:
    s = NA if v is None else str(v)
    return s.replace("|", "\\|").replace("\n", " ")


_NUMERIC = re.compile(r"^\[?[-+]?[\d.]")


def _numeric_column(cells: Sequence[Any]) -> bool:
    vals = [str(c) for c in cells if c is not None and str(c) not in (NA, "-", "", "reference")]
    return bool(vals) and all(_NUMERIC.match(v) for v in vals)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; align per column: 'l' or 'r' (default: first left, rest right)."""
    if align is None:
        align = ["l"] + ["r" if _numeric_column([r[i] for r in rows]) else "l" for i in range(1, len(header))]
    sep = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
